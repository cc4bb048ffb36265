"""The offline demo end to end on a tiny random checkpoint: formats in, files out, errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from app import offline
from moshi_mlx.audio import read_wav, write_wav
from moshi_mlx.constants import FRAME_SIZE, SAMPLE_RATE


def speech_like(rate: int, seconds: float = 1.2, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return np.stack([x] * channels, 1) if channels > 1 else x


def run_cli(args, capsys):
    try:
        code = offline.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_outputs_share_one_timeline_and_seed_reproduces(tiny_checkpoint, tmp_path, capsys):
    wav = tmp_path / "in.wav"
    write_wav(wav, speech_like(SAMPLE_RATE, 1.0), SAMPLE_RATE)
    outs = []
    for seed, name in ((7, "a"), (7, "b"), (8, "c")):
        d = tmp_path / name
        code, _ = run_cli([wav, "--model", tiny_checkpoint, "--out", d / "reply.wav", "--stereo", d / "both.wav",
                           "--transcript", d / "t.json", "--seed", seed, "--tail", 0.4, "--quiet"], capsys)
        assert code == 0
        reply, rate = read_wav(d / "reply.wav")
        both, _ = read_wav(d / "both.wav")
        frames = -(-SAMPLE_RATE // FRAME_SIZE) + 5  # 1 s padded to frames + 0.4 s tail
        assert rate == SAMPLE_RATE and reply.shape == (frames * FRAME_SIZE, 1) and both.shape == (frames * FRAME_SIZE, 2)
        np.testing.assert_array_equal(both[:, 1], reply[:, 0])
        assert np.abs(reply).max() > 0  # the random model does speak
        data = json.loads((d / "t.json").read_text())
        assert data["seed"] == seed and isinstance(data["words"], list)
        outs.append(((d / "reply.wav").read_bytes(), (d / "t.json").read_text()))
    assert outs[0] == outs[1]
    assert outs[0][0] != outs[2][0]


@pytest.mark.parametrize("rate,channels,bits", [(16000, 1, 16), (44100, 2, 16), (48000, 1, 24), (22050, 2, 32)])
def test_common_wav_formats(tiny_checkpoint, tmp_path, capsys, rate, channels, bits):
    import struct
    x = speech_like(rate, 0.5, channels)
    x = x if x.ndim == 2 else x[:, None]
    if bits == 24:
        v = np.round(x * (1 << 23)).astype(np.int32).reshape(-1)
        payload = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8).tobytes()
        code = 1
    elif bits == 32:
        payload, code = x.astype("<f4").tobytes(), 3
    else:
        payload, code = (x * 32767).astype("<i2").tobytes(), 1
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", code, channels, rate, rate * block, block, bits)
    wav = tmp_path / "in.wav"
    wav.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                    + b"data" + struct.pack("<I", len(payload)) + payload)
    code, _ = run_cli([wav, "--model", tiny_checkpoint, "--out", tmp_path / "r.wav", "--tail", 0, "--quiet",
                       "--seed", 1], capsys)
    assert code == 0
    reply, r = read_wav(tmp_path / "r.wav")
    assert r == SAMPLE_RATE and len(reply) == -(-int(round(0.5 * SAMPLE_RATE)) // FRAME_SIZE) * FRAME_SIZE


@pytest.mark.parametrize("content,needle", [(b"", "empty"), (b"not a wav at all", "not a WAV"),
                                            (None, "truncated")])
def test_bad_inputs_fail_in_one_line_without_output(tiny_checkpoint, tmp_path, content, needle):
    wav = tmp_path / "in.wav"
    if content is None:
        write_wav(wav, speech_like(SAMPLE_RATE, 0.5), SAMPLE_RATE)
        wav.write_bytes(wav.read_bytes()[:5000])
    else:
        wav.write_bytes(content)
    out = tmp_path / "reply.wav"
    r = subprocess.run([sys.executable, "-m", "app.offline", str(wav), "--model", str(tiny_checkpoint),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and needle in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_missing_model_is_one_line(tmp_path, capsys):
    wav = tmp_path / "in.wav"
    write_wav(wav, speech_like(SAMPLE_RATE, 0.3), SAMPLE_RATE)
    code, cap = run_cli([wav, "--model", tmp_path / "no-model-here", "--out", tmp_path / "r.wav", "--quiet"],
                        capsys)
    assert code == 2
    lines = [ln for ln in cap.err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:") and "no-model-here" in lines[0]
    assert not (tmp_path / "r.wav").exists()


def test_transcript_times_follow_the_frames_that_made_the_words(tiny_checkpoint, monkeypatch):
    """A forced text sequence: each word's time is the frame its first piece was produced at."""
    from moshi_mlx.constants import TEXT_EPAD, TEXT_PAD
    from moshi_mlx.loading import load

    model = load(tiny_checkpoint)
    tok = model.tokenizer
    hello, fox = tok.encode("hello"), tok.encode("fox")
    seq = [TEXT_PAD] * 3 + [TEXT_EPAD] + hello + [TEXT_PAD] * 4 + fox + [TEXT_PAD] * 3
    import moshi_mlx.engine

    real = moshi_mlx.engine.Generator

    class Forced:
        def __init__(self, lm, **kw):
            self.inner, self.t = real(lm, **kw), 0

        def settle(self):
            self.inner.settle()

        def step(self, user):
            _, moshi = self.inner.step(user)
            token = seq[self.t] if self.t < len(seq) else TEXT_PAD
            self.t += 1
            return np.array([token], dtype=np.int32), moshi

    monkeypatch.setattr(moshi_mlx.engine, "Generator", Forced)
    result = model.engine().run_offline(np.zeros(len(seq) * FRAME_SIZE, np.float32))
    assert [w.text for w in result.words] == ["hello", "fox"]
    assert result.words[0].start_frame == 4 and result.words[0].start == pytest.approx(4 * 0.08)
    assert result.words[1].start_frame == 4 + len(hello) + 4
    assert list(result.text_tokens) == seq


def test_codec_device(tiny_checkpoint, tmp_path, capsys):
    """--codec-device cpu runs; a device the machine lacks is refused in one line, before the model loads."""
    import mlx.core as mx

    wav = tmp_path / "in.wav"
    write_wav(wav, np.zeros(SAMPLE_RATE // 2, np.float32), SAMPLE_RATE)
    code, _ = run_cli([wav, "--model", tiny_checkpoint, "--out", tmp_path / "r.wav", "--tail", 0, "--quiet",
                       "--codec-device", "cpu"], capsys)
    assert code == 0 and (tmp_path / "r.wav").exists()
    if not mx.is_available(mx.gpu):
        code, out = run_cli([wav, "--model", tmp_path / "no-such-model", "--out", tmp_path / "g.wav",
                             "--codec-device", "gpu"], capsys)
        assert code == 2 and "--codec-device gpu" in out.err and "no-such-model" not in out.err


@pytest.mark.parametrize("case", ["out-is-input", "same-file-twice", "exists", "folder", "under-a-file"])
def test_output_paths_are_checked_before_the_model_loads(tmp_path, capsys, case):
    """Each refusal is one line naming the flag, exit 2, the input untouched, nothing written; the model
    folder does not exist, so an error about it would mean the check came too late."""
    wav = tmp_path / "in.wav"
    write_wav(wav, np.zeros(SAMPLE_RATE // 2, np.float32), SAMPLE_RATE)
    before = wav.read_bytes()
    (tmp_path / "taken.wav").write_bytes(b"keep me")
    (tmp_path / "dir").mkdir()
    (tmp_path / "plain").write_bytes(b"a file")
    outs = {"out-is-input": ["--out", tmp_path / "dir" / ".." / "in.wav"],
            "same-file-twice": ["--out", tmp_path / "x.wav", "--stereo", tmp_path / "dir" / ".." / "x.wav"],
            "exists": ["--out", tmp_path / "taken.wav"],
            "folder": ["--out", tmp_path / "dir"],
            "under-a-file": ["--out", tmp_path / "plain" / "sub" / "r.wav"]}[case]
    code, out = run_cli([wav, "--model", tmp_path / "no-such-model", "--quiet", *outs], capsys)
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --"), out.err
    assert "no-such-model" not in out.err and "Traceback" not in out.err
    assert wav.read_bytes() == before and (tmp_path / "taken.wav").read_bytes() == b"keep me"
    assert not (tmp_path / "x.wav").exists() and not list(tmp_path.glob("*.partial"))


def test_force_replaces_an_existing_output(tiny_checkpoint, tmp_path, capsys):
    wav = tmp_path / "in.wav"
    write_wav(wav, np.zeros(SAMPLE_RATE // 2, np.float32), SAMPLE_RATE)
    (tmp_path / "r.wav").write_bytes(b"old")
    code, _ = run_cli([wav, "--model", tiny_checkpoint, "--out", tmp_path / "r.wav", "--tail", 0, "--quiet",
                       "--force"], capsys)
    assert code == 0 and read_wav(tmp_path / "r.wav")[1] == SAMPLE_RATE


@pytest.mark.parametrize("flags", [["--seed", "-5"], ["--seed", str(2**32)], ["--temp", "nan"],
                                   ["--text-temp", "inf"], ["--tail", "nan"], ["--audio-top-k", "-1"]])
def test_numeric_flags_are_checked_when_parsed(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as e:
        offline.parse_args([str(tmp_path / "in.wav"), *flags])
    assert e.value.code == 2 and flags[0] in capsys.readouterr().err


def test_a_wav_header_with_an_impossible_rate_is_refused(tmp_path, capsys):
    wav = tmp_path / "one-hertz.wav"
    write_wav(wav, np.zeros(100, np.float32), 1)
    code, out = run_cli([wav, "--model", tmp_path / "no-such-model", "--out", tmp_path / "r.wav"], capsys)
    assert code == 2 and "1 Hz" in out.err and "8000-192000" in out.err
