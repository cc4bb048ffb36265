"""A microphone as a stream of 24 kHz model frames: the audio callback only copies into a ring; the
reader resamples and cuts frames on its own thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np

from moshi_mlx.audio.resample import Resampler
from moshi_mlx.audio.ring import SampleRing
from moshi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

from .sound_devices import DeviceError

BUFFER_SECONDS = 60.0
"""Audio held while the model is behind: a slow machine loses no words, it just shows them later."""


class Microphone:
    """Records from one input device; `frames()` yields float32 [1920] frames at 24 kHz.

    Args:
        sd: the sounddevice module.
        device, rate: from `pick_device(sd, spec, "input")`.
        on_audio: called with every block of device-rate samples as it is read (on the reader's thread;
            e.g. a recorder), or None.
    """

    def __init__(self, sd, device, rate: int, on_audio=None):
        self.rate = rate
        self.block = max(1, rate * FRAME_SIZE // SAMPLE_RATE)
        self.ring = SampleRing(int(rate * BUFFER_SECONDS))
        self.dropped = 0  # device samples lost because the ring was full
        self.on_audio = on_audio
        self._resampler = Resampler(rate, SAMPLE_RATE)
        self._pending = np.zeros(0, dtype=np.float32)
        self._lock = threading.Lock()
        try:
            self.stream = sd.InputStream(samplerate=rate, blocksize=self.block, device=device, channels=1,
                                         dtype="float32", callback=self._callback)
        except (ValueError, sd.PortAudioError) as e:
            raise DeviceError(f"cannot open the microphone ({e}); see --list-devices") from None

    def _callback(self, indata, frames, time_info, status) -> None:
        self.dropped += frames - self.ring.write(indata[:, 0])

    def __enter__(self) -> "Microphone":
        self.stream.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stream.stop()
        self.stream.close()

    @property
    def backlog_seconds(self) -> float:
        """Audio recorded and not yet handed out as frames."""
        return (self.ring.available() / self.rate) + len(self._pending) / SAMPLE_RATE

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        """Frames until `stop` is set; then those already recorded, so that the last words are kept."""
        while True:
            stopping = stop.is_set()
            n = self.ring.available()
            if n:
                raw = self.ring.read(n)
                if self.on_audio is not None:
                    self.on_audio(raw)
                self._pending = np.concatenate([self._pending, self._resampler.process(raw)])
            while len(self._pending) >= FRAME_SIZE:
                frame, self._pending = self._pending[:FRAME_SIZE], self._pending[FRAME_SIZE:]
                yield frame
            if stopping:
                return
            if not n:
                time.sleep(0.01)
