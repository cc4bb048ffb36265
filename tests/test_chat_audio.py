"""moshi-mlx-chat end to end on the virtual full-duplex sound card, with a tiny random model.

A WAV is played into the default microphone while the chat runs on the default devices; the test checks
the frames that flowed both ways, that the microphone reached the model and Moshi reached the speaker,
the step time, and that SIGINT leaves a complete recording.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time

import numpy as np
import pytest

from card import BusRecorder, inject, lag_and_corr
from chat_process import ChatProcess
from moshi_mlx.audio import read_wav, write_wav
from moshi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

pytestmark = pytest.mark.audio
SESSION_SECONDS = 11.0


def speech_like(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f = 150 + 100 * np.sin(2 * np.pi * 0.7 * t)
    x = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * (0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t))
    return (0.4 * x + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def segment_matches(ref: np.ndarray, sig: np.ndarray, seconds: float = 0.5) -> list[tuple[int, float]]:
    """For each piece of ref: where it best matches in sig, and the normalised correlation there."""
    n = int(seconds * SAMPLE_RATE)
    out = []
    for start in range(0, len(ref) - n + 1, n):
        lag, corr = lag_and_corr(ref[start:start + n], sig, max_lag=len(sig) - n)
        out.append((lag - start, round(corr, 3)))
    return out


def test_chat_on_the_virtual_card(virtual_card, tiny_checkpoint, tmp_path):
    wav = tmp_path / "question.wav"
    question = speech_like(6.0)
    write_wav(wav, question, SAMPLE_RATE)
    rec_dir = tmp_path / "rec"
    cmd = [sys.executable, "-m", "app.chat", "--model", str(tiny_checkpoint), "--record", str(rec_dir),
           "--quiet", "--seed", "1", "--silence-timeout", "0"]
    with BusRecorder() as bus:
        chat = ChatProcess(cmd)
        chat.wait_listening()
        t0 = time.monotonic()
        time.sleep(0.3)
        inject(wav)
        time.sleep(max(0.0, SESSION_SECONDS - (time.monotonic() - t0)))
        code = chat.stop()
    err = chat.stderr
    assert code == 0, err
    assert "Traceback" not in err

    summary = re.search(r"(\d+) frames .*?(\d+) skipped, (\d+) callbacks, (\d+) xruns, (\d+) speaker underruns, "
                        r"mean step ([\d.]+) ms", err)
    assert summary, err
    frames, skipped, callbacks, xruns, underruns = map(int, summary.groups()[:5])
    mean_step = float(summary.group(6))
    latency = re.search(r"latency median (\d+) ms, p90 (\d+) ms", err)
    assert latency, err
    # from the microphone's ADC to the speaker's DAC: at least the compute, plus the card's round trip
    assert mean_step <= int(latency.group(1)) <= int(latency.group(2)) < 2000
    # ~11 s of 80 ms blocks, and every block the device gave was either stepped or skipped
    assert callbacks >= (SESSION_SECONDS - 1) * SAMPLE_RATE / FRAME_SIZE
    assert callbacks - 6 <= frames + skipped <= callbacks
    assert 0 < mean_step < 1000
    print(f"\nchat on the virtual card: {frames} frames, {skipped} skipped, {callbacks} callbacks, "
          f"{xruns} xruns, {underruns} underruns, mean step {mean_step:.1f} ms")

    # SIGINT left a complete recording: one WAV (mic after echo cancellation, Moshi, raw mic) + transcript
    wavs, jsons = sorted(rec_dir.glob("*.wav")), sorted(rec_dir.glob("*.json"))
    assert len(wavs) == 1 and len(jsons) == 1 and not list(rec_dir.glob("*.partial"))
    rec, rate = read_wav(wavs[0])
    assert rate == SAMPLE_RATE and rec.shape[1] == 3
    assert abs(len(rec) - callbacks * FRAME_SIZE) <= 2 * FRAME_SIZE
    meta = json.loads(jsons[0].read_text())
    assert meta["seconds"] == pytest.approx(len(rec) / SAMPLE_RATE, abs=0.01)

    # the microphone reached the app (and so the model): its recorded track holds the injected WAV, piece
    # by piece (the sound server may slip a few samples mid-stream, so each half second is aligned alone)
    pieces = segment_matches(question, rec[:, 2])
    good = [c for _, c in pieces if c > 0.9]
    assert len(good) >= 0.8 * len(pieces), f"raw mic track does not hold the injected WAV: {pieces}"
    lags = [lag for lag, c in pieces if c > 0.9]
    assert lags == sorted(lags), f"the injected audio came out of order: {pieces}"
    # the canceller kept the user's voice: this card has no acoustic path, so there is no echo to remove,
    # but the tiny model talks all the time: double talk throughout (the bar there: 0.5). The
    # speakerphone test (test_chat_echo.py) judges the canceller on a real echo and a real pause.
    offset = next(lag for lag, c in pieces if c > 0.9)  # where the question sits in the recording
    cleaned = rec[max(offset, 0):, 0]
    heard = question[max(-offset, 0):][:len(cleaned) - 300]
    _, corr_clean = lag_and_corr(heard, cleaned, max_lag=300)  # AEC3 delays its output by ~9 ms
    print(f"cleaned microphone vs the question: corr {corr_clean:.3f}")
    assert corr_clean >= 0.5, f"cancellation lost the voice (corr {corr_clean:.3f})"
    # Moshi's frames reached the speaker: the app played audio, and the card's speaker side carries it
    spk = rec[:, 1]
    assert np.abs(spk).max() > 0.01
    played = bus.bus[:, 1]
    start = int(np.argmax(np.abs(spk) > 0))
    ref = spk[start:start + 3 * SAMPLE_RATE]
    _, corr_spk = lag_and_corr(ref, played, max_lag=len(played) - len(ref))
    assert corr_spk > 0.9, f"the speaker did not receive Moshi's audio (corr {corr_spk:.3f})"


def test_kill_9_leaves_a_valid_recording(virtual_card, tiny_checkpoint, tmp_path):
    """The recording streams to disk: a chat killed without warning leaves a WAV any reader opens,
    missing at most the last two seconds, and a transcript no older than a few seconds."""
    import wave

    rec_dir = tmp_path / "rec"
    cmd = [sys.executable, "-m", "app.chat", "--model", str(tiny_checkpoint), "--record", str(rec_dir),
           "--quiet", "--seed", "1", "--silence-timeout", "0"]
    chat = ChatProcess(cmd)
    chat.wait_listening()
    time.sleep(8.0)
    chat.stop(signal.SIGKILL)
    (wav_path,) = rec_dir.glob("*.wav")
    with wave.open(str(wav_path)) as w:
        seconds = w.getnframes() / w.getframerate()
        assert w.getnchannels() == 3
    rec, rate = read_wav(wav_path)
    assert len(rec) / rate == pytest.approx(seconds)
    assert seconds >= 8.0 - 2.0, seconds
    (js,) = rec_dir.glob("*.json")
    assert json.loads(js.read_text())["seconds"] >= 8.0 - 5.0
