"""A preallocated single-producer / single-consumer ring of float32 samples.

Made for real-time audio callbacks: writing and reading copy into or out of one preallocated array, never
allocate samples, never lock and never raise. One thread writes, one other thread reads; each side
updates only its own counter, after its copy, so the other side never sees half-copied samples.
"""

from __future__ import annotations

import numpy as np


class SampleRing:
    """A fixed-capacity FIFO of mono float32 samples."""

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError(f"ring capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._written = 0  # total samples ever written (writer-owned)
        self._read = 0  # total samples ever read or skipped (reader-owned)

    def available(self) -> int:
        """Samples ready to read."""
        return self._written - self._read

    @property
    def total_written(self) -> int:
        """Samples ever written: the stream position of the next sample written."""
        return self._written

    def space(self) -> int:
        """Samples that can be written without overwriting unread ones."""
        return self.capacity - self.available()

    def write(self, samples: np.ndarray) -> int:
        """Writer side: copies as many samples as fit; returns how many (the rest are dropped)."""
        n = min(len(samples), self.space())
        start = self._written % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start:start + first] = samples[:first]
        if n > first:
            self._buf[:n - first] = samples[first:n]
        self._written += n
        return n

    def read_into(self, out: np.ndarray) -> int:
        """Reader side: fills `out` from the front as far as samples exist; returns how many."""
        n = min(len(out), self.available())
        start = self._read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._buf[start:start + first]
        if n > first:
            out[first:n] = self._buf[:n - first]
        self._read += n
        return n

    def read(self, n: int) -> np.ndarray:
        """Reader side, outside real-time code: a new array of exactly n samples (n <= available())."""
        out = np.empty(n, dtype=np.float32)
        got = self.read_into(out)
        if got != n:
            raise ValueError(f"asked for {n} samples, only {got} were available")
        return out

    def skip(self, n: int) -> int:
        """Reader side: drops up to n of the oldest samples; returns how many."""
        n = min(n, self.available())
        self._read += n
        return n
