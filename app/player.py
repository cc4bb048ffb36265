"""Playing generated speech as it comes: the producer writes frames into a ring, the audio callback only
copies out of it (silence while the ring is empty)."""

from __future__ import annotations

import threading
import time

import numpy as np

from moshi_mlx.audio.resample import Resampler
from moshi_mlx.audio.ring import SampleRing
from moshi_mlx.constants import SAMPLE_RATE

from .sound_devices import DeviceError, pick_device

BUFFER_SECONDS = 600.0
"""Speech held ahead of the speaker: a fast machine generates far ahead of real time."""


class Player:
    """Plays float32 24 kHz samples on one output device.

    `first_sound_at` is the `time.perf_counter()` at which the callback first handed real samples to the
    device (the time to first audio, measured where it ends).
    """

    def __init__(self, sd, spec: str | None):
        device, rate, self.name = pick_device(sd, spec, "output")
        self.rate = rate
        self.ring = SampleRing(int(rate * BUFFER_SECONDS))
        self._resampler = Resampler(SAMPLE_RATE, rate) if rate != SAMPLE_RATE else None
        self.first_sound_at: float | None = None
        self._done = threading.Event()
        self._closing = False
        try:
            self.stream = sd.OutputStream(samplerate=rate, device=device, channels=1, dtype="float32",
                                          blocksize=rate // 50, callback=self._callback)
        except (ValueError, sd.PortAudioError) as e:
            raise DeviceError(f"{self.name}: cannot play ({e}); see --list-devices") from None

    def _callback(self, outdata, frames, time_info, status) -> None:
        out = outdata[:, 0]
        got = self.ring.read_into(out)
        if got and self.first_sound_at is None:
            self.first_sound_at = time.perf_counter()
        out[got:] = 0.0
        if self._closing and self.ring.available() == 0:
            self._done.set()

    def write(self, pcm: np.ndarray) -> None:
        """Queues samples (24 kHz); blocks while the ring is full."""
        x = np.asarray(pcm, dtype=np.float32)
        if self._resampler is not None:
            x = self._resampler.process(x)
        while len(x):
            n = self.ring.write(x)
            x = x[n:]
            if len(x):
                time.sleep(0.01)

    def __enter__(self) -> "Player":
        self.stream.start()
        return self

    def drain(self, timeout: float) -> None:
        """Waits until everything queued has been played (or `timeout`)."""
        self._closing = True
        self._done.wait(timeout)
        time.sleep(0.1)  # the device's own buffer

    def __exit__(self, *exc) -> None:
        self.stream.stop()
        self.stream.close()
