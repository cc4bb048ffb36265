"""Acoustic echo cancellation for the chat: WebRTC's AEC3 through the `pywebrtc_audio` binding.

Moshi hears its own voice when the speaker plays into the microphone (a laptop without headphones) and
answers itself. AEC3 removes that echo given the far-end reference: exactly what the audio callback wrote
to the speaker in the same callback as the microphone block. It finds the echo's delay itself, up to
~500 ms (measured: 500 ms converges, 520 ms and beyond mostly not; `stream_delay_ms` does not extend
it), so never pre-align the reference.

Why this binding: it keeps the near end's waveform (correlation 0.96-0.98 with the user's voice, after a
fixed ~9 ms delay of AEC3's own), where livekit's APM reached 0.66; 28-65 dB echo reduction in
tests/test_echo.py; ~0.6 ms per 80 ms block on one x86 core, with the GIL released.

What the binding accepts, and what this wrapper adds:
- `AudioProcessor(echo_cancellation=True)` takes any rate from 8 kHz (its `EchoCanceller` only 16, 32
  and 48 kHz); it resamples inside, so 24, 44.1 and 48 kHz all work. A rate that is not a whole number
  of samples per 10 ms (22.05 kHz) runs in `rate // 100`-sample frames (the binding's approximation):
  still 40 dB and correlation 0.98 at 22.05 kHz, through the buffering below.
- It works in 10 ms frames and zero-pads a partial last frame of every call, which corrupts a stream
  cut into other lengths. So: when `block_size` is a whole number of 10 ms frames (the chat's 80 ms
  blocks at 24, 44.1 and 48 kHz), blocks pass straight through, no delay added; otherwise this wrapper
  buffers into 10 ms frames and the output trails the input by a fixed `delay_samples` = one frame.
"""

from __future__ import annotations

import math

import numpy as np

FRAME_S = 0.01  # AEC3 works in 10 ms frames
AEC_DELAY_S = 0.009  # AEC3's own delay from microphone to cleaned output (223 samples at 24 kHz)
MAX_ECHO_DELAY_S = 0.5  # measured ceiling of AEC3's delay search


class EchoUnavailable(RuntimeError):
    """The echo canceller cannot run here; the message says what to install."""


def _audio_processor(sample_rate: int):
    try:
        from pywebrtc_audio import AudioProcessor
    except ImportError:
        raise EchoUnavailable("echo cancellation needs the pywebrtc-audio package: "
                              "`pip install pywebrtc-audio` (or reinstall moshi-mlx: `pip install -e .`)") from None
    return AudioProcessor(sample_rate=sample_rate, num_channels=1, echo_cancellation=True)


class EchoCanceller:
    """Removes the speaker's echo from the microphone, block by block, with a running ERLE estimate.

    Not thread-safe: one thread calls `process` (the inference thread, never the audio callback).
    A dead microphone (exact zeros) comes out as faint comfort noise (~-80 dBFS) while the speaker
    plays: detect digital silence on the raw microphone, not on this output.

    Args:
        sample_rate: rate of both signals in Hz (8 kHz and up; 24, 44.1 and 48 kHz are the usual ones).
        block_size: the length every block will have, if known. A whole number of 10 ms frames means
            no added delay while blocks are whole frames; None or any other length means blocks of any
            length, delayed by one 10 ms frame. Should a block that is not whole frames come anyway,
            the canceller switches to buffering for good rather than fail a live session: the output
            gets one frame of silence there and trails by `delay_samples` = one frame from then on
            (`switched` says so; whole blocks avoid it).
        erle_window_s: time constant of the ERLE estimate.
        far_active_db: reference level (dB re full scale) above which a block counts for the ERLE.

    Raises:
        EchoUnavailable: the `pywebrtc_audio` binding is not installed.
        ValueError: a sample rate outside what the binding takes.
    """

    def __init__(self, sample_rate: int, block_size: int | None = None, erle_window_s: float = 1.0,
                 far_active_db: float = -50.0):
        if not 8000 <= int(sample_rate) <= 384000:
            raise ValueError(f"echo cancellation runs at 8-384 kHz; got {sample_rate} Hz")
        self.sample_rate = int(sample_rate)
        self.frame = self.sample_rate // 100
        self.direct = block_size is not None and block_size > 0 and block_size % self.frame == 0
        self.delay_samples = 0 if self.direct else self.frame
        """Samples the output trails the input by, added by this wrapper (AEC3 adds ~9 ms of its own)."""
        self.switched = False
        self._apm = _audio_processor(self.sample_rate)
        self._tau = erle_window_s * self.sample_rate
        self._far_floor = 10 ** (far_active_db / 10)
        self.reset()

    def reset(self) -> None:
        """Forgets the echo path, the buffered samples and the ERLE (e.g. after changing devices)."""
        self._apm.reset()
        self._near_q = np.zeros(0, dtype=np.float32)
        self._far_q = np.zeros(0, dtype=np.float32)
        self._out_q = np.zeros(self.delay_samples, dtype=np.float32)
        self._in_power = 0.0
        self._out_power = 0.0
        self._counted = 0.0

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancels the echo of `far` in `near`.

        Args:
            near: microphone block, float32 in [-1, 1], shape [n] or [n, 1].
            far: what was written to the speaker in the same callback, same shape.

        Returns:
            The cleaned microphone, float32 [n] (trailing the input by `delay_samples`).

        Raises:
            ValueError: blocks of different lengths, or more than one channel.
        """
        near, far = _mono(near, "near"), _mono(far, "far")
        n = len(near)
        if len(far) != n:
            raise ValueError(f"microphone block of {n} samples but speaker block of {len(far)}: "
                             "pass the blocks of one callback together")
        if n == 0:
            return near
        if self.direct and n % self.frame:
            self.direct, self.switched, self.delay_samples = False, True, self.frame
            self._out_q = np.zeros(self.frame, dtype=np.float32)
        if self.direct:
            out = self._apm.process(near, far)
        else:
            out = self._buffered(near, far)
        self._update_erle(near, far, out)
        return out

    def _buffered(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        near_q = np.concatenate([self._near_q, near])
        far_q = np.concatenate([self._far_q, far])
        whole = len(near_q) // self.frame * self.frame
        if whole:
            self._out_q = np.concatenate([self._out_q, self._apm.process(near_q[:whole], far_q[:whole])])
        self._near_q, self._far_q = near_q[whole:], far_q[whole:]
        # One frame of zeros at the start always covers the partial frame still waiting.
        out, self._out_q = self._out_q[: len(near)], self._out_q[len(near):]
        return out

    def _update_erle(self, near: np.ndarray, far: np.ndarray, out: np.ndarray) -> None:
        n = len(near)
        decay = math.exp(-n / self._tau)
        if float(np.dot(far, far)) / n < self._far_floor:
            return  # nothing played: no echo to reduce, the ratio would only measure the room
        self._in_power = decay * self._in_power + float(np.dot(near, near))
        self._out_power = decay * self._out_power + float(np.dot(out, out))
        self._counted = decay * self._counted + n

    @property
    def erle_db(self) -> float | None:
        """Echo reduction over the last ~second while the speaker played, in dB; None before that.

        10 log10(microphone power / cleaned power). An indicator for the live view: it reads low while
        the user talks over Moshi (their voice is kept, as it should be) and while the echo is still
        on its way (up to the echo delay after playback starts).
        """
        if self._counted < 0.25 * self._tau or self._in_power <= 0.0:
            return None
        return 10.0 * math.log10(self._in_power / max(self._out_power, self._in_power * 1e-10))


def _mono(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name}: expected one channel, [n] or [n, 1]; got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)
