"""Recording a conversation to disk as it happens: a streaming WAV and a transcript JSON.

The WAV is 16-bit PCM: every reader opens it (Python's `wave` reads no float WAV), it is half the size of
float32 (24 kHz x 3 channels = 0.5 GB per hour), and the signals are 16-bit at the microphone anyway.
Samples go to the file as they come, so memory stays flat however long the session; the header's sizes
are patched after the data is flushed, at least every `patch_every_s` and at close, so the file is a
valid WAV at every moment: a crash or `kill -9` loses at most that last second. (The kernel still holds
the data: a power cut can lose more; no fsync, so the writing thread never waits for the disk.) A WAV
cannot describe more than 4 GiB, so a longer session continues in `...-part2.wav` and so on.
"""

from __future__ import annotations

import json
import os
import struct
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

HEADER_BYTES = 44
MAX_DATA_BYTES = 0xFFFFFFFF - HEADER_BYTES  # the RIFF size field is 32 bits
SAMPLE_BYTES = 2


class RecordingError(Exception):
    """The recording cannot go where it was asked to; the message says why and what to do."""


def check_record_dir(folder: str | os.PathLike) -> Path:
    """Checks a --record folder before anything slow happens; creates it when only it is missing.

    Raises:
        RecordingError: its parent does not exist, it is not a folder, or it cannot be written.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise RecordingError(f"--record {folder}: is a file, not a folder; give a folder to write recordings into")
    if not folder.exists():
        if not folder.parent.is_dir():
            raise RecordingError(f"--record {folder}: the folder {folder.parent} does not exist; create it first")
        try:
            folder.mkdir()
        except OSError as e:
            raise RecordingError(f"--record {folder}: cannot create the folder ({e.strerror})") from None
    probe = folder / f".moshi-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")  # os.access says yes on read-only mounts and some network folders
        probe.unlink()
    except OSError as e:
        raise RecordingError(f"--record {folder}: cannot write there ({e.strerror}); choose another folder") from None
    return folder


def session_stem(folder: str | os.PathLike, started: datetime) -> Path:
    """folder/moshi-YYYYmmdd-HHMMSS, with -2, -3 ... added when a recording of that name exists."""
    base = Path(folder) / f"moshi-{started:%Y%m%d-%H%M%S}"
    stem, k = base, 1
    while any(stem.with_name(stem.name + ext).exists() for ext in (".wav", ".json", "-part2.wav")):
        k += 1
        stem = base.with_name(f"{base.name}-{k}")
    return stem


class Recorder:
    """A 16-bit PCM WAV written block by block; readable at every moment.

    Call `write` from the inference or main thread, never from the audio callback (it does file I/O).

    Args:
        path: the file; never overwritten (RecordingError if it exists).
        sample_rate: in Hz.
        channels: columns of every block.
        patch_every_s: the header is brought up to date after a write when this much time has passed
            since the last update (0: after every write).
        max_data_bytes: audio bytes per file before continuing in the next part (for tests).
        clock: injectable for tests.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int, channels: int, patch_every_s: float = 1.0,
                 max_data_bytes: int = MAX_DATA_BYTES, clock: Callable[[], float] = time.monotonic):
        if channels < 1 or sample_rate < 1:
            raise ValueError(f"a WAV needs channels >= 1 and a rate >= 1 Hz; got {channels}, {sample_rate}")
        self.sample_rate, self.channels = int(sample_rate), int(channels)
        self.frame_bytes = SAMPLE_BYTES * self.channels
        self.max_frames = max_data_bytes // self.frame_bytes
        self.patch_every_s, self.clock = patch_every_s, clock
        self.paths: list[Path] = []
        self.frames = 0  # in all parts
        self.clipped = 0  # samples beyond [-1, 1]: a hint that a level is too high
        self._f = None
        self._open(Path(path))

    def _open(self, path: Path) -> None:
        try:
            self._f = open(path, "xb")  # exclusive: never overwrite a recording
        except FileExistsError:
            raise RecordingError(f"{path} exists already; not overwriting it") from None
        except OSError as e:
            raise RecordingError(f"cannot create {path} ({e.strerror})") from None
        self.paths.append(path)
        self._part_frames = 0
        self._f.write(self._header(0))
        self._patch()

    def _header(self, data_bytes: int) -> bytes:
        rate, fb = self.sample_rate, self.frame_bytes
        return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
                + b"fmt " + struct.pack("<IHHIIHH", 16, 1, self.channels, rate, rate * fb, fb, 8 * SAMPLE_BYTES)
                + b"data" + struct.pack("<I", data_bytes))

    def _patch(self) -> None:
        """Flushes the data, then states its size: the header never claims bytes the file lacks."""
        self._f.flush()
        data = self._part_frames * self.frame_bytes
        fd = self._f.fileno()
        os.pwrite(fd, struct.pack("<I", 36 + data), 4)
        os.pwrite(fd, struct.pack("<I", data), 40)
        self._last_patch = self.clock()

    def write(self, block: np.ndarray) -> None:
        """Appends float samples in [-1, 1] (clipped beyond): [n, channels], or [n] for one channel."""
        if self._f is None:
            raise ValueError("the recording is closed")
        x = np.asarray(block, dtype=np.float32)
        if x.ndim == 1 and self.channels == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected blocks of shape [n, {self.channels}], got {x.shape}")
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        self.clipped += int(np.count_nonzero(np.abs(x) > 1.0))
        pcm = np.rint(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")
        while len(pcm):
            room = self.max_frames - self._part_frames
            if room == 0:
                self._next_part()
                continue
            part = pcm[:room]
            self._f.write(part.tobytes())
            self._part_frames += len(part)
            self.frames += len(part)
            pcm = pcm[room:]
        if self.clock() - self._last_patch >= self.patch_every_s:
            self._patch()

    def _next_part(self) -> None:
        self._patch()
        self._f.close()
        first = self.paths[0]
        self._open(first.with_name(f"{first.stem}-part{len(self.paths) + 1}{first.suffix}"))

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    def close(self) -> None:
        """Brings the header up to date and closes; safe to call twice."""
        if self._f is not None:
            self._patch()
            self._f.close()
            self._f = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Writes JSON so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class JsonSnapshots:
    """Rewrites a JSON file from the owner's `make()` every `every_s` seconds (call `maybe_write` often).

    Args:
        path: the file (replaced atomically each time).
        make: returns the JSON-able state now, e.g. the transcript so far; called on the caller's thread.
        every_s: the most time a crash can lose.
        clock: injectable for tests.
    """

    def __init__(self, path: str | os.PathLike, make: Callable[[], object], every_s: float = 3.0,
                 clock: Callable[[], float] = time.monotonic):
        self.path, self.make, self.every_s, self.clock = Path(path), make, every_s, clock
        self._last = None

    def maybe_write(self) -> bool:
        """Writes if `every_s` has passed since the last write (or none was made); returns whether it did."""
        if self._last is not None and self.clock() - self._last < self.every_s:
            return False
        self.write()
        return True

    def write(self) -> None:
        write_json_atomic(self.path, self.make())
        self._last = self.clock()
