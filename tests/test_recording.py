"""The streaming recording (app/recording.py): valid at every moment, survives kill -9, flat memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import wave
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from app.recording import (JsonSnapshots, Recorder, RecordingError, check_record_dir, session_stem,
                           write_json_atomic)
from moshi_mlx.audio import read_wav

SR = 24000
BLOCK = 1920
ROOT = Path(__file__).resolve().parents[1]


def blocks(n: int, channels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield (0.3 * rng.standard_normal((BLOCK, channels))).clip(-1, 1).astype(np.float32)


def as_pcm(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, -1, 1) * 32767) / 32768  # what a 16-bit file reads back as


def test_header_is_valid_while_writing(tmp_path):
    path = tmp_path / "live.wav"
    written = []
    with Recorder(path, SR, 3, patch_every_s=0.0) as rec:
        for k, b in enumerate(blocks(40)):
            rec.write(b)
            written.append(b)
            if k % 13 == 0:  # open it from outside, as a crash would leave it
                audio, rate = read_wav(path)
                assert rate == SR and audio.shape == ((k + 1) * BLOCK, 3)
                np.testing.assert_allclose(audio, as_pcm(np.concatenate(written)), atol=1e-6)
                with wave.open(str(path)) as w:
                    assert (w.getnframes(), w.getnchannels(), w.getsampwidth(), w.getframerate()) == (
                        (k + 1) * BLOCK, 3, 2, SR)
    audio, _ = read_wav(path)
    np.testing.assert_allclose(audio, as_pcm(np.concatenate(written)), atol=1e-6)
    assert rec.seconds == 40 * BLOCK / SR


def test_header_lags_by_at_most_the_patch_interval(tmp_path):
    now = [0.0]
    path = tmp_path / "lag.wav"
    rec = Recorder(path, SR, 2, patch_every_s=2.0, clock=lambda: now[0])
    seen = []
    for b in blocks(100, channels=2):  # 8 s, one block per 80 ms of the fake clock
        now[0] += BLOCK / SR
        rec.write(b)
        with wave.open(str(path)) as w:
            seen.append(rec.frames - w.getnframes())
    assert max(seen) / SR <= 2.0 + BLOCK / SR and min(seen) == 0
    rec.close()
    with wave.open(str(path)) as w:
        assert w.getnframes() == 100 * BLOCK


def test_mono_blocks_clipping_and_closed(tmp_path):
    rec = Recorder(tmp_path / "m.wav", SR, 1)
    rec.write(np.array([0.5, 2.0, -3.0, np.nan], dtype=np.float32))
    rec.close()
    rec.close()
    audio, _ = read_wav(tmp_path / "m.wav")
    np.testing.assert_allclose(audio[:, 0], [16384 / 32768, 32767 / 32768, -32767 / 32768, 0.0], atol=1e-4)
    assert rec.clipped == 2
    with pytest.raises(ValueError, match="closed"):
        rec.write(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        Recorder(tmp_path / "s.wav", SR, 2).write(np.zeros((4, 3), np.float32))


def test_never_overwrites(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"keep")
    with pytest.raises(RecordingError, match="exists already"):
        Recorder(tmp_path / "x.wav", SR, 1)
    assert (tmp_path / "x.wav").read_bytes() == b"keep"


def test_long_sessions_continue_in_parts(tmp_path):
    path = tmp_path / "long.wav"
    frames_per_part = 5000
    with Recorder(path, SR, 3, max_data_bytes=frames_per_part * 6) as rec:
        data = np.concatenate(list(blocks(7)))  # 13440 frames: 3 parts
        for b in np.array_split(data, 5):
            rec.write(b)
    assert [p.name for p in rec.paths] == ["long.wav", "long-part2.wav", "long-part3.wav"]
    parts = [read_wav(p)[0] for p in rec.paths]
    assert [len(p) for p in parts] == [5000, 5000, 3440]
    np.testing.assert_allclose(np.concatenate(parts), as_pcm(data), atol=1e-6)


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from app.recording import Recorder
    rate, block = 24000, 1920
    rec = Recorder(sys.argv[1], rate, 3)
    t0 = time.monotonic()
    k = 0
    while True:
        x = (np.arange(k * block, (k + 1) * block) % 30000 / 32767.0).astype(np.float32)
        rec.write(np.stack([x, -x, x], axis=1))
        if k == 0:
            print("recording", flush=True)
        k += 1
        time.sleep(max(0.0, t0 + k * block / rate - time.monotonic()))  # real time, as the chat
""")


def test_kill_9_leaves_a_playable_file(tmp_path):
    path = tmp_path / "killed.wav"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "recording"
        t0 = time.monotonic()
        time.sleep(3.0)
        elapsed = time.monotonic() - t0
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    audio, rate = read_wav(path)
    with wave.open(str(path)) as w:
        assert w.getnframes() == len(audio)
    got = len(audio) / rate
    print(f"killed after {elapsed:.2f} s: {got:.2f} s readable")
    assert got >= elapsed - 2.0
    x = (np.arange(len(audio)) % 30000 / 32767.0).astype(np.float32)
    np.testing.assert_allclose(audio, as_pcm(np.stack([x, -x, x], axis=1)), atol=1e-6)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_stays_flat_over_ten_minutes(tmp_path):
    block = (0.3 * np.random.default_rng(0).standard_normal((BLOCK, 3))).astype(np.float32)
    n = 10 * 60 * SR // BLOCK
    rss = []
    t0 = time.perf_counter()
    with Recorder(tmp_path / "ten.wav", SR, 3) as rec:
        for k in range(n):
            rec.write(block)
            if k % (n // 10) == 0:
                rss.append(_rss_mb())
    took = time.perf_counter() - t0
    print(f"10 min x 3 ch in {took:.2f} s, RSS {rss[0]:.1f} -> {max(rss):.1f} MB, "
          f"file {os.path.getsize(rec.paths[0]) / 2**20:.0f} MB")
    assert max(rss) - rss[0] < 10.0
    with wave.open(str(rec.paths[0])) as w:
        assert w.getnframes() == n * BLOCK


def test_check_record_dir(tmp_path):
    assert check_record_dir(tmp_path / "new") == tmp_path / "new" and (tmp_path / "new").is_dir()
    assert check_record_dir(tmp_path / "new") == tmp_path / "new"  # existing folder: fine
    assert list((tmp_path / "new").iterdir()) == []  # the write probe is gone
    with pytest.raises(RecordingError, match="does not exist; create it first"):
        check_record_dir(tmp_path / "missing" / "rec")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecordingError, match="is a file, not a folder"):
        check_record_dir(tmp_path / "file")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(RecordingError, match="cannot write there"):
            check_record_dir(ro)


def test_session_stem_avoids_existing_recordings(tmp_path):
    when = datetime(2025, 3, 1, 9, 5, 7)
    stem = session_stem(tmp_path, when)
    assert stem.name == "moshi-20250301-090507"
    stem.with_suffix(".json").write_text("{}")
    assert session_stem(tmp_path, when).name == "moshi-20250301-090507-2"


def test_json_snapshots_are_atomic_and_periodic(tmp_path):
    now = [0.0]
    words = []
    snap = JsonSnapshots(tmp_path / "t.json", lambda: {"words": list(words)}, every_s=3.0, clock=lambda: now[0])
    assert snap.maybe_write()
    words.append("hello")
    now[0] = 2.9
    assert not snap.maybe_write()
    now[0] = 3.0
    assert snap.maybe_write()
    assert json.loads((tmp_path / "t.json").read_text()) == {"words": ["hello"]}
    assert not (tmp_path / "t.json.partial").exists()
    write_json_atomic(tmp_path / "t.json", {"words": ["é"]})
    assert json.loads((tmp_path / "t.json").read_text(encoding="utf-8")) == {"words": ["é"]}
