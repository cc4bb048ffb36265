"""Safetensors read and written one tensor at a time, so a 15 GB file never has to sit in memory.

The format: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to
`{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the data region that follows the
header), and an optional `"__metadata__"` object of strings. The reader parses and checks the header itself
(so a truncated or foreign file is a one-line error, not a crash inside a C++ loader) and reads the bytes of
one tensor, or of a range of its rows, with plain file reads: nothing is memory-mapped, so those bytes leave
the process as soon as the caller drops them. The writer takes every final name, dtype and shape up front,
writes the header, then expects the data in exactly that order.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from moshi_mlx.checkpoint import starts_like_pickle

from . import ConvertError

HEADER_LENGTH_BYTES = 8
HEADER_LENGTH_FORMAT = "<Q"
METADATA_KEY = "__metadata__"
# Headers of real checkpoints are well under 1 MB; a larger claim means a file that is not safetensors.
MAX_HEADER_BYTES = 100 * 1024 * 1024
# The format recommends padding the header so that the data region starts 8-byte aligned.
HEADER_ALIGNMENT = 8
HEADER_PADDING = b" "

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}



@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    end: int    # absolute file offset one past the last byte

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def row_bytes(self) -> int:
        """Bytes of one index along the first axis (the whole tensor for a scalar)."""
        return DTYPE_BYTES[self.dtype] * math.prod(self.shape[1:])


def _pickle_error(path: Path, start: bytes) -> ConvertError | None:
    """The refusal for a PyTorch pickle (zip archive or raw pickle stream) misnamed .safetensors, else None.

    Only asked once the bytes failed to parse as safetensors: a real header length may well start with 0x80.
    """
    if starts_like_pickle(start):
        return ConvertError(f"{path}: a PyTorch pickle checkpoint, refused (unpickling can run arbitrary code); "
                            "convert from the model's .safetensors weights (e.g. kyutai/moshiko-pytorch-bf16)")
    return None


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parses and checks the header of a safetensors file, without reading any tensor data.

    Raises:
        ConvertError: the file is too short, its header length points past the end, the JSON is invalid,
            an entry is malformed, or the data region is shorter than the header says.
    """
    path = Path(path)
    size = path.stat().st_size
    redownload = "re-download or re-export it"

    def corrupt(what: str) -> ConvertError:
        return _pickle_error(path, raw_len) or ConvertError(f"{path}: {what}; {redownload}")

    with open(path, "rb") as f:
        raw_len = f.read(HEADER_LENGTH_BYTES)
        if len(raw_len) < HEADER_LENGTH_BYTES:
            raise corrupt(f"truncated safetensors file ({size} bytes, no header)")
        (length,) = struct.unpack(HEADER_LENGTH_FORMAT, raw_len)
        if length > size - HEADER_LENGTH_BYTES or length > MAX_HEADER_BYTES:
            raise corrupt(f"corrupt or truncated safetensors file (header of {length} bytes claimed, file is "
                          f"{size} bytes)")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise corrupt(f"corrupt safetensors header (invalid JSON: {e})") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: corrupt safetensors header (not a JSON object); {redownload}")
    data_start = HEADER_LENGTH_BYTES + length
    infos = {}
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        infos[name] = _parse_entry(path, name, entry, data_start)
    if not infos:
        raise ConvertError(f"{path}: the safetensors file holds no tensors")
    last = max(info.end for info in infos.values())
    if last > size:
        raise ConvertError(f"{path}: truncated safetensors file (the header needs {last} bytes, the file has "
                           f"{size}); {redownload}")
    return infos


def _parse_entry(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    bad = f"{path}: corrupt safetensors header (entry {name!r} "
    if not isinstance(entry, dict):
        raise ConvertError(bad + "is not an object); re-download or re-export it")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise ConvertError(bad + f"has unknown dtype {dtype!r}); re-download or re-export it")
    ints = lambda v: isinstance(v, list) and all(isinstance(i, int) and i >= 0 for i in v)  # noqa: E731
    if not ints(shape) or not ints(offsets) or len(offsets) != 2:
        raise ConvertError(bad + "has a malformed shape or data_offsets); re-download or re-export it")
    begin, end = offsets
    if end - begin != DTYPE_BYTES[dtype] * math.prod(shape):
        raise ConvertError(bad + f"spans {end - begin} bytes, its {dtype} shape {shape} needs "
                           f"{DTYPE_BYTES[dtype] * math.prod(shape)}); re-download or re-export it")
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


class TensorReader:
    """Reads single tensors (or row ranges of them) from an open safetensors file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "rb")

    def read(self, info: TensorInfo, rows: tuple[int, int] | None = None) -> np.ndarray:
        """The raw bytes of `info` (or of rows `[start, stop)` along its first axis), as a uint8 array."""
        begin, end = info.begin, info.end
        if rows is not None:
            begin, end = info.begin + rows[0] * info.row_bytes, info.begin + rows[1] * info.row_bytes
        buf = np.empty(end - begin, dtype=np.uint8)
        self._file.seek(begin)
        got = self._file.readinto(memoryview(buf))
        if got != buf.nbytes:  # the file shrank since its header was checked
            raise ConvertError(f"{self.path}: truncated while reading {info.name}; re-download it")
        return buf

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class OutputSpec:
    """One tensor of a file being written: its final name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return DTYPE_BYTES[self.dtype] * math.prod(self.shape)


def encode_header(specs: Iterable[OutputSpec], metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and padded JSON header for tensors laid out back to back in the given order."""
    header: dict[str, object] = {}
    if metadata:
        header[METADATA_KEY] = metadata
    offset = 0
    for spec in specs:
        if spec.name in header:
            raise ValueError(f"duplicate tensor name {spec.name!r}")
        header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += HEADER_PADDING * (-(HEADER_LENGTH_BYTES + len(body)) % HEADER_ALIGNMENT)
    return struct.pack(HEADER_LENGTH_FORMAT, len(body)) + body


def file_size(specs: Iterable[OutputSpec], metadata: dict[str, str] | None = None) -> int:
    """Bytes of the file `SequentialWriter` writes for these tensors."""
    specs = list(specs)
    return len(encode_header(specs, metadata)) + sum(s.nbytes for s in specs)


class SequentialWriter:
    """Writes a safetensors file whose header is known up front, then one tensor at a time, in order.

    Holds no tensor itself: `write` copies the given bytes to the file and returns. `close` checks that
    every declared tensor was written and flushes the file to disk.

    Args:
        path: File to create (an existing one is replaced).
        specs: Every tensor of the file, in the order `write` will be called.
        metadata: The optional `__metadata__` strings.
    """

    def __init__(self, path: Path, specs: list[OutputSpec], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self._specs = list(specs)
        self._next = 0
        self._file: BinaryIO = open(self.path, "wb")
        self._file.write(encode_header(self._specs, metadata))
        self.largest_write = 0  # bytes of the largest single tensor written (what streaming holds at most)

    def write(self, name: str, data: np.ndarray | bytes | memoryview) -> None:
        """Appends the next tensor's raw little-endian bytes; `name` must be the next declared one."""
        if self._next >= len(self._specs):
            raise ValueError(f"{self.path}: {name!r} written after the last declared tensor")
        spec = self._specs[self._next]
        view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        if name != spec.name or view.nbytes != spec.nbytes:
            raise ValueError(f"{self.path}: expected {spec.name!r} ({spec.nbytes} bytes) next, got {name!r} "
                             f"({view.nbytes} bytes)")
        self._file.write(view)
        self.largest_write = max(self.largest_write, view.nbytes)
        self._next += 1

    def close(self) -> None:
        """Flushes and closes; raises if some declared tensor was never written."""
        try:
            if self._next != len(self._specs):
                raise ValueError(f"{self.path}: {len(self._specs) - self._next} declared tensors not written")
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def abort(self) -> None:
        """Closes without checks (the caller removes the file)."""
        self._file.close()
