"""The virtual full-duplex sound card (../shared/audio-ci) from tests: inject into the mic, record the bus.

Adapted from the card's guide: the bus monitor is stereo on one clock, left = microphone, right = speaker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SR = 24000
CARD = Path(os.environ.get("AUDIO_CI_CARD",
                           Path(__file__).resolve().parents[1].parent / "shared/audio-ci/virtual_soundcard.sh"))


class BusRecorder:
    """with BusRecorder() as rec: ...  then rec.bus[:, 0] = mic, rec.bus[:, 1] = speaker."""

    def __enter__(self):
        self._f = tempfile.NamedTemporaryFile(suffix=".raw", delete=False)
        self._p = subprocess.Popen(["parec", "-d", "bus.monitor", "--raw", "--format=s16le", f"--rate={SR}",
                                    "--channels=2", "--latency-msec=40"], stdout=self._f)
        return self

    def __exit__(self, *exc):
        self._p.send_signal(signal.SIGINT)
        self._p.wait(timeout=5)
        self._f.close()
        raw = np.fromfile(self._f.name, "<i2")
        os.unlink(self._f.name)
        self.bus = raw[: len(raw) // 2 * 2].reshape(-1, 2).astype(np.float32) / 32768.0


def inject(wav_path) -> None:
    """Plays a 24 kHz WAV into the default input; returns when it has played."""
    subprocess.run(["paplay", "-d", "mic_inject", str(wav_path)], check=True)


def lag_and_corr(ref: np.ndarray, sig: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Samples by which sig trails ref, and the normalised correlation there."""
    n = 1 << (len(ref) + len(sig)).bit_length()
    cc = np.fft.irfft(np.fft.rfft(sig, n) * np.conj(np.fft.rfft(ref, n)), n)[: max_lag + 1]
    lag = int(np.argmax(cc))
    seg = sig[lag: lag + len(ref)]
    r = ref[: len(seg)]
    return lag, float(r @ seg / (np.linalg.norm(r) * np.linalg.norm(seg) + 1e-12))
