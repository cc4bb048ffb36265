"""The chat as a speakerphone: on the virtual card, through a simulated room, with a user talking.

The card has no acoustic path, so a room feeder (tests/card.py) records what the chat plays, convolves it
with a room response and plays it back into the microphone, with a user's voice added. The chat records
its microphone before (channel 2) and after (channel 0) echo cancellation; the feeder keeps the ground
truth. A tiny random model never stops talking, so the chat runs with its reply gated by a schedule (Moshi
talks, pauses, talks again) and held at a fixed level: the stretches where the user talks alone are real.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import numpy as np
import pytest

from moshi_mlx.audio import read_wav
from moshi_mlx.constants import SAMPLE_RATE

pytestmark = pytest.mark.audio

# Seconds from the conversation's first frame: when Moshi's (gated) voice plays, and when the user talks.
MOSHI_TALKS = ((0.0, 11.0), (14.0, 18.0))
USER_TALKS_FROM, USER_TALKS_FOR = 8.0, 13.0
SESSION_S = 22.0
ROOM_DELAY_S = 0.1  # the card and the feeder add ~300 ms: AEC3 reaches ~500 ms

GATED_CHAT = """
import sys
import numpy as np
import moshi_mlx.engine as engine

SCHEDULE = {schedule!r}
LEVEL = 0.1  # reply RMS (-20 dBFS): through the room (gain 0.5) about as loud as the user at the microphone
finish = engine.Engine.finish

def gated(self, *args, **kwargs):
    result = finish(self, *args, **kwargs)
    t = (self.frame - 1) / 12.5
    if any(a <= t < b for a, b in SCHEDULE):
        rms = float(np.sqrt(np.mean(result.pcm.astype(np.float64) ** 2)))
        result.pcm = (result.pcm * (LEVEL / rms) if rms > 0 else result.pcm).astype(np.float32)
    else:
        result.pcm = np.zeros_like(result.pcm)
    return result

engine.Engine.finish = gated
from app.chat import main
sys.exit(main(sys.argv[1:]))
"""


def test_speakerphone_cancels_the_echo_and_keeps_the_user(virtual_card, tiny_checkpoint, tmp_path):
    from card import RoomFeeder
    from chat_process import ChatProcess
    from room import room_response, score_echo, speech_like

    script = tmp_path / "gated_chat.py"
    script.write_text(GATED_CHAT.format(schedule=MOSHI_TALKS))
    rec_dir = tmp_path / "rec"
    cmd = [sys.executable, str(script), "--model", str(tiny_checkpoint), "--record", str(rec_dir), "--quiet",
           "--seed", "1", "--silence-timeout", "0", "--stats-log", str(tmp_path / "stats.csv")]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    user = speech_like(USER_TALKS_FOR, SAMPLE_RATE, "high", seed=4, rms_db=-26.0)
    chat = ChatProcess(cmd, env)
    try:
        chat.wait_listening()
        t0 = time.monotonic()
        # The room starts with the conversation: its ground truth then maps onto the chat's recording.
        with RoomFeeder(room_response(ROOM_DELAY_S, SAMPLE_RATE, gain=0.5)) as room:
            time.sleep(max(0.0, USER_TALKS_FROM - (time.monotonic() - t0)))
            room.say(user)
            time.sleep(max(0.0, SESSION_S - (time.monotonic() - t0)))
            code = chat.stop()
    finally:
        chat.stop(signal.SIGKILL)
    err = chat.stderr
    assert code == 0, err
    assert "Traceback" not in err

    (wav,) = sorted(rec_dir.glob("*.wav"))
    rec, rate = read_wav(wav)
    assert rate == SAMPLE_RATE and rec.shape[1] == 3
    cleaned, moshi, raw = rec[:, 0], rec[:, 1], rec[:, 2]
    truth = room.on_app_timeline(raw)
    assert truth.mapped[SAMPLE_RATE:-SAMPLE_RATE].mean() > 0.8, "the feeder's sound is not in the recording"
    s = score_echo(truth.near, truth.echo, raw, cleaned, SAMPLE_RATE)
    summary = re.search(r"mean step ([\d.]+) ms, latency median (\d+) ms, p90 (\d+) ms, echo reduction", err)
    assert summary, err
    mean_step, lat_median, lat_p90 = float(summary.group(1)), int(summary.group(2)), int(summary.group(3))
    print(f"\nspeakerphone on the virtual card: {s}; {truth.shifts} feeder shifts, {room.underruns} underruns; "
          f"latency median {lat_median} ms, p90 {lat_p90} ms, mean step {mean_step:.1f} ms")
    assert np.abs(moshi).max() > 0.05  # Moshi did talk through the speaker
    # double talk at about equal levels: Moshi's echo and the user, each while talking
    echo_db = 10 * np.log10(np.mean(truth.echo[np.abs(truth.echo) > 1e-4] ** 2))
    user_db = 10 * np.log10(np.mean(truth.near[np.abs(truth.near) > 1e-4] ** 2))
    print(f"echo {echo_db:.1f} dBFS, user {user_db:.1f} dBFS at the microphone")
    assert abs(echo_db - user_db) < 4.0
    assert s.frames["echo_only"] > 100 and s.frames["near_alone"] > 50 and s.frames["double_talk"] > 50, s.frames
    assert s.erle_db >= 20.0, s
    assert s.near_alone_corr >= 0.8, s
    assert s.double_talk_corr >= 0.5, s
    # latency: at least the compute of a frame, plus the card's buffers (PortAudio's timestamps give
    # 230-260 ms in all here, most of it the card's 3-block output buffer)
    assert mean_step <= lat_median <= lat_p90 and 150 <= lat_median < 2000
    log = (tmp_path / "stats.csv").read_text().splitlines()
    assert "latency_ms_median,latency_ms_p90" in log[0] and len(log) >= 3
