"""moshi-mlx-transcribe through its console script: file mode, its outputs, and bad inputs refused in
one line before any work; `--mic` end to end on the virtual sound card."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from moshi_mlx.audio import read_wav, write_wav
from moshi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

SCRIPT = Path(sys.executable).parent / "moshi-mlx-transcribe"


@pytest.fixture(scope="module")
def stt_checkpoint(tmp_path_factory):
    from moshi_mlx.demo_speech import build_stt_checkpoint as build_tiny_stt_checkpoint

    return build_tiny_stt_checkpoint(tmp_path_factory.mktemp("stt"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    from test_chat_audio import speech_like

    path = tmp_path_factory.mktemp("wav") / "talk.wav"
    write_wav(path, speech_like(3.0), SAMPLE_RATE)
    return path


def transcribe(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def assert_refused(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode != 0, p.stdout + p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert "error: " in last and "Traceback" not in p.stderr, p.stderr
    for needle in needles:
        assert needle in last, last


def test_file_mode_writes_json_and_srt(stt_checkpoint, speech, tmp_path):
    out_json, out_srt = tmp_path / "t.json", tmp_path / "t.srt"
    p = transcribe(speech, "--model", stt_checkpoint, "--json", out_json, "--srt", out_srt, "--quiet")
    assert p.returncode == 0, p.stderr
    data = json.loads(out_json.read_text())
    assert set(data) == {"text", "words", "tokens", "end_of_turn", "model", "audio_seconds"}
    assert data["audio_seconds"] == pytest.approx(-(-3 * SAMPLE_RATE // FRAME_SIZE) * FRAME_SIZE / SAMPLE_RATE)
    # Every step from the first: 13 silent prefix frames (1 s), the audio, 7 flush frames (0.5 s delay).
    assert len(data["tokens"]) == 13 + 38 + 7 == len(data["end_of_turn"])
    assert data["words"] and p.stdout.strip() == data["text"] == " ".join(w["word"] for w in data["words"])
    assert all(w["start"] <= w["end"] for w in data["words"])
    # The same tokens as the Python API on the same file.
    import moshi_mlx

    pcm, _ = read_wav(speech)
    api = moshi_mlx.load(stt_checkpoint).transcriber().transcribe(pcm[:, 0])
    assert api.tokens == data["tokens"]
    cues = out_srt.read_text().strip().split("\n\n")
    assert cues[0].splitlines()[0] == "1" and " --> " in cues[0].splitlines()[1]
    assert " ".join(c.splitlines()[2] for c in cues) == data["text"]


def test_bad_inputs_are_refused_in_one_line(stt_checkpoint, tiny_checkpoint, speech, tmp_path):
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    assert_refused(transcribe(empty, "--model", stt_checkpoint), "holds no audio")
    assert_refused(transcribe(speech, "--model", tiny_checkpoint), "not a speech-to-text model")
    no_tok = tmp_path / "no_tok"
    shutil.copytree(stt_checkpoint, no_tok)
    (no_tok / json.loads((no_tok / "config.json").read_text())["tokenizer_name"]).unlink()
    assert_refused(transcribe(speech, "--model", no_tok), "tokenizer")
    assert_refused(transcribe(tmp_path / "missing.wav", "--model", stt_checkpoint), "missing.wav")
    assert_refused(transcribe("--model", stt_checkpoint), "either an input WAV or --mic")
    assert_refused(transcribe(speech, "--json", speech, "--model", stt_checkpoint), "--json", "is the input")
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    assert_refused(transcribe(speech, "--json", existing, "--model", stt_checkpoint), "--force")
    assert existing.read_text() == "{}"
    assert_refused(transcribe(speech, "--temp", "nan"), "--temp")
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.audio
def test_mic_mode_on_the_virtual_card(virtual_card, stt_checkpoint, speech, tmp_path):
    from card import inject, lag_and_corr
    from chat_process import ChatProcess

    out_json, rec = tmp_path / "live.json", tmp_path / "rec"
    proc = ChatProcess([str(SCRIPT), "--mic", "--model", str(stt_checkpoint), "--json", str(out_json),
                        "--record", str(rec)])
    proc.wait_listening()
    time.sleep(0.5)
    inject(speech)
    time.sleep(1.0)
    code = proc.stop(signal.SIGINT)
    assert code == 0, proc.stderr
    data = json.loads(out_json.read_text())
    assert data["words"] and data["audio_seconds"] >= 3.0
    assert len(data["tokens"]) == 13 + round(data["audio_seconds"] * 12.5) + 7
    # What the microphone heard holds the injected speech...
    (wav,) = rec.glob("transcribe-*.wav")
    heard, rate = read_wav(wav)
    said, _ = read_wav(speech)
    from moshi_mlx.audio import resample

    heard = resample(heard[:, 0], rate, SAMPLE_RATE)
    lag, corr = lag_and_corr(said[:SAMPLE_RATE, 0], heard, max_lag=len(heard) - SAMPLE_RATE)
    assert corr > 0.9, (lag, corr)
    # ... and reached the model: its tokens differ from those of the same span of silence.
    import moshi_mlx

    stt = moshi_mlx.load(stt_checkpoint).transcriber()
    silent = stt.transcribe(np.zeros(round(data["audio_seconds"] * SAMPLE_RATE), dtype=np.float32))
    assert len(silent.tokens) == len(data["tokens"])
    start = 13 + lag // FRAME_SIZE + 1
    assert data["tokens"][start:start + 30] != silent.tokens[start:start + 30]


def test_demo_runs_without_weights(tmp_path):
    out = tmp_path / "demo.json"
    p = transcribe("--demo", "--json", out)
    assert p.returncode == 0, p.stderr
    assert "GIBBERISH" in p.stderr and json.loads(out.read_text())["tokens"]
    assert_refused(transcribe("--demo", "--model", "x"), "--demo builds its own model")
