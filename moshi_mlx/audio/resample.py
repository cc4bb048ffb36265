"""Band-limited sample-rate conversion (polyphase windowed sinc), streaming or whole-signal.

Rates reduce to a ratio up/down (24000/44100 = 80/147). Output sample n sits at input time n * down / up;
it is the dot product of the input history with one phase of a Kaiser-windowed sinc low-pass at the lower
Nyquist frequency. The whole-signal function runs the streaming object, so both give the same samples.
"""

from __future__ import annotations

from math import gcd

import numpy as np

_TAPS_PER_PHASE = 32  # per output sample; with the Kaiser window below, ~-80 dB stop band
_KAISER_BETA = 8.6
_CHUNK = 65536  # outputs rendered per block: bounds the temporary [n, taps] window matrix


def _design(up: int, down: int) -> tuple[np.ndarray, int]:
    """Polyphase bank [up, taps] (row p = phase p, oldest input first) and the delay in output samples.

    The sinc is centred on a whole number of output samples, so that whole-signal resampling can drop
    the delay exactly.
    """
    length = _TAPS_PER_PHASE * up  # filter length at the up-sampled rate
    delay = int(round((length - 1) / 2 / down))
    centre = delay * down
    half = (length - 1) / 2
    n = np.arange(length, dtype=np.float64)
    cutoff = 0.5 / max(up, down) * 0.94  # a little transition band below the lower Nyquist
    rel = np.clip((n - centre) / half, -1.0, 1.0)
    window = np.i0(_KAISER_BETA * np.sqrt(1.0 - rel**2)) / np.i0(_KAISER_BETA)
    h = 2 * cutoff * np.sinc(2 * cutoff * (n - centre)) * window * up
    bank = h.reshape(_TAPS_PER_PHASE, up).T[:, ::-1].copy()  # bank[p, K-1-j] = h[p + j * up]
    return bank, delay


class Resampler:
    """Streaming resampler for one mono stream.

    `process(chunk)` returns every output sample whose inputs have arrived; the output lags the ideal
    timeline by `delay` samples. The stream starts from silence.
    """

    def __init__(self, rate_in: int, rate_out: int):
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
        g = gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        self.identity = self.up == self.down
        if self.identity:
            self.bank, self.delay = None, 0
        else:
            self.bank, self.delay = _design(self.up, self.down)
        self._history = np.zeros(_TAPS_PER_PHASE - 1)
        self._history_start = -(_TAPS_PER_PHASE - 1)  # stream index of _history[0]
        self._next = 0  # index of the next output sample

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feeds mono float samples; returns the float32 output samples now complete."""
        x = np.asarray(chunk, dtype=np.float64).reshape(-1)
        if self.identity:
            return x.astype(np.float32)
        buf = np.concatenate([self._history, x])
        start = self._history_start
        last = start + len(buf) - 1
        # output n needs inputs up to floor(n * down / up) <= last
        end = ((last + 1) * self.up + self.down - 1) // self.down
        out = self._render(buf, start, self._next, end)
        self._next = max(self._next, end)
        oldest_needed = (self._next * self.down) // self.up - (_TAPS_PER_PHASE - 1)
        drop = min(max(0, oldest_needed - start), len(buf))
        self._history = buf[drop:]
        self._history_start = start + drop
        return out

    def _render(self, buf: np.ndarray, start: int, n0: int, n1: int) -> np.ndarray:
        if n1 <= n0:
            return np.zeros(0, dtype=np.float32)
        offsets = np.arange(-(_TAPS_PER_PHASE - 1), 1)
        outs = []
        for a in range(n0, n1, _CHUNK):
            n = np.arange(a, min(n1, a + _CHUNK), dtype=np.int64)
            newest = (n * self.down) // self.up - start
            phase = (n * self.down) % self.up
            outs.append(np.einsum("nk,nk->n", buf[newest[:, None] + offsets], self.bank[phase]))
        return np.concatenate(outs).astype(np.float32)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resamples a whole mono signal: round(len * rate_out / rate_in) samples on the same timeline."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    if rate_in == rate_out:
        return x.copy()
    r = Resampler(rate_in, rate_out)
    want = int(round(len(x) * rate_out / rate_in))
    tail = np.zeros(_TAPS_PER_PHASE * r.down // r.up + _TAPS_PER_PHASE + 1)
    y = np.concatenate([r.process(x), r.process(tail)])
    return y[r.delay:r.delay + want]
