"""Read and write the WAV files people actually have, with numpy only.

Reads PCM 8/16/24/32-bit, IEEE float 32/64, plain or WAVE_FORMAT_EXTENSIBLE, any rate and channel count;
returns float32 in [-1, 1]. Writes 16-bit PCM or 32-bit float. Bad files raise `AudioFormatError` with a
sentence a person can act on.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class AudioFormatError(ValueError):
    """The file is not a WAV we can read; the message says why and what to do."""


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Reads a WAV file.

    Args:
        path: the file.

    Returns:
        (samples float32 [frames, channels] in [-1, 1], sample rate in Hz).

    Raises:
        AudioFormatError: missing, empty, truncated, not a WAV, or an encoding we do not read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AudioFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AudioFormatError(f"{path}: is a folder, not a WAV file") from None
    if len(data) == 0:
        raise AudioFormatError(f"{path}: the file is empty")
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        raise AudioFormatError(f"{path}: not a WAV file (no RIFF/WAVE header); convert it to WAV first, "
                               "e.g. `ffmpeg -i input -ar 24000 -ac 1 out.wav`")
    if data[:4] == b"RIFX":
        raise AudioFormatError(f"{path}: big-endian WAV (RIFX) is not supported; re-save it as a standard WAV")
    fmt = None
    pcm = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            fmt = _parse_fmt(path, body)
        elif cid == b"data":
            # Writers that stream set the size to 0 or 0xFFFFFFFF: then the data runs to the end.
            if size in (0, 0xFFFFFFFF):
                body = data[pos + 8:]
            elif len(body) < size:
                raise AudioFormatError(f"{path}: the WAV declares {size} bytes of audio but holds "
                                       f"{len(body)}: the file is truncated")
            pcm = body
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise AudioFormatError(f"{path}: WAV without a 'fmt ' chunk: the file is damaged")
    if pcm is None:
        raise AudioFormatError(f"{path}: WAV without a 'data' chunk: the file is truncated or damaged")
    code, channels, rate, bits = fmt
    width = bits // 8
    frame = width * channels
    n = len(pcm) // frame
    if n == 0:
        raise AudioFormatError(f"{path}: the WAV holds no audio")
    raw = np.frombuffer(pcm[: n * frame], dtype=np.uint8)
    return _decode(path, raw, code, bits).reshape(n, channels), rate


def _parse_fmt(path: Path, body: bytes) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise AudioFormatError(f"{path}: damaged 'fmt ' chunk")
    code, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if code == _EXTENSIBLE and len(body) >= 26:
        code = struct.unpack("<H", body[24:26])[0]  # first two bytes of the sub-format GUID
    if channels == 0 or rate == 0:
        raise AudioFormatError(f"{path}: WAV header says {channels} channels at {rate} Hz: damaged file")
    if code not in (_PCM, _FLOAT) or (code == _PCM and bits not in (8, 16, 24, 32)) or (
            code == _FLOAT and bits not in (32, 64)):
        raise AudioFormatError(f"{path}: unsupported WAV encoding (format {code}, {bits} bits); use PCM "
                               "8/16/24/32-bit or float, e.g. `ffmpeg -i input -c:a pcm_s16le out.wav`")
    return code, channels, rate, bits


def _decode(path: Path, raw: np.ndarray, code: int, bits: int) -> np.ndarray:
    if code == _FLOAT:
        x = raw.view("<f4" if bits == 32 else "<f8").astype(np.float32)
        if not np.isfinite(x).all():
            raise AudioFormatError(f"{path}: the float WAV contains NaN or infinite samples")
        return x
    if bits == 8:  # 8-bit WAV is unsigned
        return (raw.astype(np.float32) - 128.0) / 128.0
    if bits == 16:
        return raw.view("<i2").astype(np.float32) / 32768.0
    if bits == 24:
        b = raw.reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float32) / float(1 << 23)
    return (raw.view("<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)


def write_wav(path: str | os.PathLike, samples: np.ndarray, rate: int, float32: bool = False) -> None:
    """Writes samples [frames] or [frames, channels] as a WAV, atomically.

    The file appears under its name only once complete, so an interrupted write never leaves a partial
    file that looks finished.

    Args:
        path: destination.
        samples: float audio in [-1, 1] (clipped for 16-bit output).
        rate: sample rate in Hz.
        float32: write IEEE float instead of 16-bit PCM.
    """
    path = Path(path)
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    channels = x.shape[1]
    if float32:
        payload, code, bits = x.astype("<f4").tobytes(), _FLOAT, 32
    else:
        payload, code, bits = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes(), _PCM, 16
    block = channels * bits // 8
    header = b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, code, channels, rate, rate * block, block, bits)
    header += b"data" + struct.pack("<I", len(payload))
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_bytes(header + payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or an interrupt leaves nothing behind
        raise
