"""Microphone-to-speaker latency of each reply frame, from the sound device's own timestamps.

For every reply frame: the time from the ADC time of the last microphone sample the model had read for
it to the DAC time of the first sample of the reply. The audio callback only stores, per call, where its
blocks sit in the sample streams and PortAudio's `inputBufferAdcTime` / `outputBufferDacTime`; the
inference side turns sample positions into times from those records afterwards.

Where the host API gives no timestamps (zeros), both ends fall back to the sample clock of the stream
itself (sample n of the input and of the output both at n / rate from the first callback): that counts
the frame, the compute and the rings, not the device's own buffers.
"""

from __future__ import annotations

from collections import deque

import numpy as np

_RECORDS = 512
"""Callbacks remembered (~41 s of 80 ms blocks): far more than a reply can be late."""


class CallbackClock:
    """Per-callback records of the two sample streams, written by the audio callback (copies only).

    Positions count device samples since the stream started: `mic` the samples the callback put into
    the microphone ring, `spk` the samples it took out of the speaker ring (reply audio only). A duplex
    callback hands the device as many samples as it takes, so `mic` also counts every output sample
    (silence included): the sample clock of both directions.
    """

    def __init__(self, rate: int):
        self.rate = rate
        self.count = 0
        self._mic = np.zeros(_RECORDS, np.int64)
        self._spk = np.zeros(_RECORDS, np.int64)
        self._got = np.zeros(_RECORDS, np.int64)
        self._adc = np.zeros(_RECORDS, np.float64)
        self._dac = np.zeros(_RECORDS, np.float64)
        self._mic_pos = self._spk_pos = 0

    def record(self, frames: int, got: int, time_info) -> None:
        """Called once per callback after the copies: `got` reply samples were played of `frames`."""
        i = self.count % _RECORDS
        self._mic[i], self._spk[i], self._got[i] = self._mic_pos, self._spk_pos, got
        adc = dac = 0.0
        if time_info is not None:
            adc, dac = float(time_info.inputBufferAdcTime), float(time_info.outputBufferDacTime)
        self._adc[i], self._dac[i] = adc, dac
        self._mic_pos += frames
        self._spk_pos += got
        self.count += 1  # last: a reader never sees a half-written record

    def _block_time(self, i: int, adc: bool) -> float:
        """When record i's block was captured (`adc`) or is played: the device's time, or the sample clock."""
        if self._adc[i] or self._dac[i]:
            return self._adc[i] if adc else self._dac[i]
        return self._mic[i] / self.rate

    def _window(self) -> range:
        n = self.count
        return range(max(0, n - _RECORDS), n)

    def adc_time(self, mic_pos: int) -> float | None:
        """When microphone sample `mic_pos` was captured (device clock, or the sample clock), if known."""
        for k in reversed(self._window()):
            i = k % _RECORDS
            if self._mic[i] <= mic_pos:
                return self._block_time(i, adc=True) + (mic_pos - self._mic[i]) / self.rate
        return None

    def dac_time(self, spk_pos: int) -> float | None:
        """When reply sample `spk_pos` reaches the speaker, once a callback has played it; else None."""
        for k in reversed(self._window()):
            i = k % _RECORDS
            start, got = self._spk[i], self._got[i]
            if start <= spk_pos < start + got:
                return self._block_time(i, adc=False) + (spk_pos - start) / self.rate
            if start + got <= spk_pos:
                return None  # not played yet
        return None

    def forgot(self, spk_pos: int) -> bool:
        """Whether reply sample `spk_pos` was played before the oldest record still kept."""
        window = self._window()
        return bool(window) and window.start > 0 and spk_pos < self._spk[window.start % _RECORDS]

    @property
    def has_device_times(self) -> bool:
        """Whether the host API gave timestamps (else latencies use the sample clock)."""
        if not self.count:
            return False
        i = (self.count - 1) % _RECORDS
        return bool(self._adc[i] or self._dac[i])


class LatencyMeter:
    """Pairs each reply frame with its microphone frame and measures the gap once the reply is played.

    Keeps the recent values for the live view and a 1 ms histogram of the whole session (bounded memory
    for sessions of hours) for its median and 90th percentile.
    """

    MAX_MS = 10_000

    def __init__(self, clock: CallbackClock, recent: int = 64):
        self.clock = clock
        self._pending: deque[tuple[float, int]] = deque()
        self.recent_ms: deque[float] = deque(maxlen=recent)
        self._histogram = np.zeros(self.MAX_MS + 1, np.int64)
        self.count = 0

    def reply_queued(self, adc_time: float | None, spk_pos: int) -> None:
        """A reply frame was written to the speaker ring at `spk_pos`, for input captured at `adc_time`."""
        if adc_time is not None:
            self._pending.append((adc_time, spk_pos))

    def resolve(self) -> None:
        """Measures every pending reply that has reached the speaker (call from one thread only)."""
        while self._pending:
            adc, pos = self._pending[0]
            dac = self.clock.dac_time(pos)
            if dac is None:
                if not self.clock.forgot(pos):
                    return  # not played yet
                self._pending.popleft()  # played so long ago that its record is gone
                continue
            self._pending.popleft()
            ms = 1000.0 * (dac - adc)
            self.recent_ms.append(ms)
            self._histogram[int(min(max(ms, 0.0), self.MAX_MS))] += 1
            self.count += 1

    def summary(self) -> tuple[float, float] | None:
        """(median, p90) in ms over the whole session (1 ms resolution), None before the first reply."""
        if not self.count:
            return None
        cum = np.cumsum(self._histogram)
        return (float(np.searchsorted(cum, 0.5 * self.count)), float(np.searchsorted(cum, 0.9 * self.count)))

    def recent(self) -> float | None:
        """Median of the last replies (live view)."""
        return float(np.median(self.recent_ms)) if self.recent_ms else None
