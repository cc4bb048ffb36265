"""WAV reading/writing and resampling: the formats people have, and errors that say what to do."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from moshi_mlx.audio import AudioFormatError, Resampler, read_wav, resample, write_wav


def _wav_bytes(samples: np.ndarray, rate: int, code: int, bits: int, extensible: bool = False) -> bytes:
    """A WAV written independently of write_wav, so the reader is not tested against itself."""
    x = samples if samples.ndim == 2 else samples[:, None]
    ch = x.shape[1]
    if code == 3:
        payload = x.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        payload = np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    elif bits == 24:
        v = np.clip(np.round(x * (1 << 23)), -(1 << 23), (1 << 23) - 1).astype(np.int32).reshape(-1)
        payload = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8).tobytes()
    else:
        dt, scale = {16: ("<i2", 1 << 15), 32: ("<i4", 1 << 31)}[bits]
        payload = np.clip(np.round(x * scale), -scale, scale - 1).astype(dt).tobytes()
    block = ch * bits // 8
    if extensible:
        guid = struct.pack("<H", code) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, ch, rate, rate * block, block, bits, 22, bits, 0) + guid
    else:
        fmt = struct.pack("<HHIIHH", code, ch, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 4) + b"INFO"
    chunks += b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize("code,bits,tol", [(1, 8, 1e-2), (1, 16, 1e-4), (1, 24, 1e-6), (1, 32, 1e-8),
                                           (3, 32, 0), (3, 64, 0)])
@pytest.mark.parametrize("extensible", [False, True])
def test_reads_common_encodings(tmp_path, code, bits, tol, extensible):
    rng = np.random.default_rng(0)
    x = (rng.uniform(-0.9, 0.9, size=(1000, 2))).astype(np.float32)
    p = tmp_path / "in.wav"
    p.write_bytes(_wav_bytes(x, 44100, code, bits, extensible))
    y, rate = read_wav(p)
    assert rate == 44100 and y.shape == (1000, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=tol + 1e-7)


def test_write_then_read_round_trip(tmp_path):
    x = np.sin(np.linspace(0, 100, 4800)).astype(np.float32) * 0.5
    write_wav(tmp_path / "a.wav", x, 24000)
    write_wav(tmp_path / "b.wav", np.stack([x, -x], 1), 24000, float32=True)
    y, r = read_wav(tmp_path / "a.wav")
    assert r == 24000 and y.shape == (4800, 1)
    np.testing.assert_allclose(y[:, 0], x, atol=1 / 32767)
    z, _ = read_wav(tmp_path / "b.wav")
    np.testing.assert_array_equal(z, np.stack([x, -x], 1))
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"ID3\x04 this is an mp3", "not a WAV"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", "fmt"),
])
def test_bad_files_say_what_is_wrong(tmp_path, content, message):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(AudioFormatError, match=message):
        read_wav(p)


def test_truncated_and_missing_files(tmp_path):
    good = _wav_bytes(np.zeros((2400, 1), np.float32), 24000, 1, 16)
    p = tmp_path / "cut.wav"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(AudioFormatError, match="truncated"):
        read_wav(p)
    with pytest.raises(AudioFormatError, match="no such file"):
        read_wav(tmp_path / "nope.wav")


@pytest.mark.parametrize("rate_in", [8000, 16000, 22050, 44100, 48000])
def test_resample_keeps_a_tone_and_its_timeline(rate_in):
    t = np.arange(rate_in) / rate_in
    y = resample(np.sin(2 * np.pi * 440 * t), rate_in, 24000)
    assert len(y) == 24000
    ref = np.sin(2 * np.pi * 440 * np.arange(24000) / 24000)
    assert np.abs(y - ref)[100:-100].max() < 1e-3


def test_resample_removes_what_the_new_rate_cannot_hold():
    t = np.arange(48000) / 48000
    y = resample(np.sin(2 * np.pi * 15000 * t), 48000, 24000)  # above 12 kHz: must not alias to 9 kHz
    assert np.abs(y[100:-100]).max() < 0.01


def test_streaming_resampler_equals_whole_signal():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(30000).astype(np.float32)
    whole = resample(x, 44100, 24000)
    r = Resampler(44100, 24000)
    parts, pos = [], 0
    padded = np.concatenate([x, np.zeros(200, np.float32)])
    while pos < len(padded):
        n = int(rng.integers(1, 2500))
        parts.append(r.process(padded[pos:pos + n]))
        pos += n
    streamed = np.concatenate(parts)[r.delay:r.delay + len(whole)]
    np.testing.assert_array_equal(streamed, whole)
