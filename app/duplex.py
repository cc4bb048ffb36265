"""The real-time heart of the voice chat: one duplex audio callback and one inference thread.

The callback (audio thread, real-time priority) only copies: the microphone block into a ring, the next
speaker block out of another ring (silence when it is empty), both blocks into recording rings, and counts
status flags. The inference thread waits for a full 80 ms frame, bounds the backlog by skipping old input,
runs the model step, and queues the reply. No sounddevice import here: tests drive it with a fake stream.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from moshi_mlx.audio.resample import Resampler
from moshi_mlx.audio.ring import SampleRing
from moshi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

StepFn = Callable[[np.ndarray], "tuple[np.ndarray, str | None]"]


@dataclass
class DuplexStats:
    """Counters the live view shows; written by one thread each, read by anyone."""

    callbacks: int = 0
    frames_in: int = 0  # model frames consumed from the microphone
    frames_out: int = 0  # model frames queued for the speaker
    skipped_frames: int = 0  # input frames dropped to catch up
    mic_dropped: int = 0  # samples lost because the mic ring was full
    speaker_underruns: int = 0  # callbacks that found too little reply audio
    input_overflow: int = 0
    input_underflow: int = 0
    output_underflow: int = 0
    output_overflow: int = 0
    silent_input_frames: int = 0  # consecutive all-zero microphone frames (macOS without permission)
    input_level: float = 0.0
    step_ms: deque = field(default_factory=lambda: deque(maxlen=256))  # recent steps, for the view
    step_ms_total: float = 0.0  # every step, for the session's mean
    backlog_frames: int = 0

    @property
    def mean_step_ms(self) -> float:
        return self.step_ms_total / self.frames_in if self.frames_in else 0.0

    @property
    def xruns(self) -> int:
        return self.input_overflow + self.input_underflow + self.output_underflow + self.output_overflow


class DuplexSession:
    """Connects a sound stream's callback to a per-frame model step.

    Args:
        step: the model step: one 1920-sample float32 frame at 24 kHz in -> (1920 samples out, text or None).
        device_rate: the stream's sample rate; other than 24 kHz is resampled in the inference thread.
        block_size: the stream's block size in device samples.
        max_backlog_frames: waiting input beyond this many frames is skipped (oldest first) so that
            latency stays bounded when the model is slower than real time.
        record: keep the microphone and speaker signals (as the device saw them, one timeline).
        on_text: called in the inference thread with each text piece.
        clock, sleep: injectable for tests.
    """

    def __init__(self, step: StepFn, device_rate: int = SAMPLE_RATE, block_size: int = FRAME_SIZE,
                 max_backlog_frames: int = 3, record: bool = False,
                 on_text: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.step_fn = step
        self.device_rate = int(device_rate)
        self.block_size = int(block_size)
        self.max_backlog_frames = max(1, int(max_backlog_frames))
        self.on_text = on_text
        self.clock, self.sleep = clock, sleep
        self.stats = DuplexStats()
        # Rings hold ~2 s: far more than the backlog bound, so the callback never has to drop.
        ring = max(8 * self.block_size, 2 * self.device_rate)
        self.mic = SampleRing(ring)
        self.speaker = SampleRing(ring)
        self.record = record
        # Recording rings are drained by the inference thread and the UI loop; 30 s covers a slow step.
        rec = max(ring, 30 * self.device_rate)
        self.rec_mic = SampleRing(rec) if record else None
        self.rec_speaker = SampleRing(rec) if record else None
        self._rec_chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self._rec_lock = threading.Lock()  # between the inference thread and the final drain, not the callback
        self._to_model = Resampler(self.device_rate, SAMPLE_RATE)
        self._to_device = Resampler(SAMPLE_RATE, self.device_rate)
        self._model_in = SampleRing(4 * FRAME_SIZE + 2 * self.block_size + 64)
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ audio thread: copies only
    def callback(self, indata, outdata, frames, time_info, status) -> None:
        """sounddevice.Stream callback (duplex, float32, mono)."""
        st = self.stats
        st.callbacks += 1
        if status:
            st.input_overflow += bool(status.input_overflow)
            st.input_underflow += bool(status.input_underflow)
            st.output_underflow += bool(status.output_underflow)
            st.output_overflow += bool(status.output_overflow)
        mic = indata[:, 0]
        st.mic_dropped += frames - self.mic.write(mic)
        out = outdata[:, 0]
        got = self.speaker.read_into(out)
        if got < frames:
            out[got:] = 0.0
            if self.stats.frames_out:  # before the first reply, silence is expected
                st.speaker_underruns += 1
        if self.record:
            self.rec_mic.write(mic)
            self.rec_speaker.write(out)

    # ------------------------------------------------------------------ inference thread
    def run(self, stop: threading.Event) -> None:
        """Steps the model on every full frame until `stop` is set; an exception ends it and is kept."""
        try:
            while not stop.is_set():
                frame = self._next_frame(stop)
                if frame is None:
                    continue
                t0 = self.clock()
                reply, text = self.step_fn(frame)
                ms = 1000.0 * (self.clock() - t0)
                self.stats.step_ms.append(ms)
                self.stats.step_ms_total += ms
                self.stats.frames_in += 1
                self._queue_reply(np.asarray(reply, dtype=np.float32).reshape(-1))
                if text and self.on_text is not None:
                    self.on_text(text)
                self.drain_recording()
        except BaseException as e:  # noqa: BLE001 - kept for the main thread, which reports it
            self.error = e
            stop.set()

    def _next_frame(self, stop: threading.Event) -> np.ndarray | None:
        """Waits (sleeping, not spinning) for one 24 kHz frame; skips old input beyond the backlog bound."""
        while self._model_in.available() < FRAME_SIZE:
            have = self.mic.available()
            if have:
                # Up-sampling makes more samples than it reads: take only what fits once resampled.
                room = max(1, (self._model_in.space() - 2) * self.device_rate // SAMPLE_RATE)
                chunk = self.mic.read(min(have, room))
                resampled = self._to_model.process(chunk)
                self.stats.mic_dropped += len(resampled) - self._model_in.write(resampled)
                continue
            if stop.is_set():
                return None
            missing = FRAME_SIZE - self._model_in.available()
            self.sleep(max(0.001, min(0.02, missing / SAMPLE_RATE)))
        waiting = (self._model_in.available() + self.mic.available() * SAMPLE_RATE // self.device_rate)
        backlog = waiting // FRAME_SIZE
        self.stats.backlog_frames = backlog
        if backlog > self.max_backlog_frames:
            # Too far behind: keep the newest frame, drop the rest, so latency cannot grow without bound.
            drop = backlog - 1
            dropped_model = self._model_in.skip(min(drop * FRAME_SIZE, self._model_in.available()))
            rest = drop * FRAME_SIZE - dropped_model
            self.mic.skip(rest * self.device_rate // SAMPLE_RATE)
            self.stats.skipped_frames += drop
            return None
        frame = self._model_in.read(FRAME_SIZE)
        peak = float(np.abs(frame).max())
        self.stats.input_level = peak
        self.stats.silent_input_frames = self.stats.silent_input_frames + 1 if peak == 0.0 else 0
        return frame

    def _queue_reply(self, reply: np.ndarray) -> None:
        out = self._to_device.process(reply)
        self.speaker.write(out)
        self.stats.frames_out += 1

    # ------------------------------------------------------------------ recording
    def drain_recording(self) -> None:
        """Moves recorded samples out of the real-time rings (inference or main thread)."""
        if not self.record:
            return
        with self._rec_lock:
            n = min(self.rec_mic.available(), self.rec_speaker.available())
            if n:
                self._rec_chunks.append((self.rec_mic.read(n), self.rec_speaker.read(n)))

    def recording(self) -> np.ndarray:
        """Everything recorded so far: float32 [samples, 2], microphone left, speaker right."""
        self.drain_recording()
        with self._rec_lock:
            if not self._rec_chunks:
                return np.zeros((0, 2), dtype=np.float32)
            mic = np.concatenate([m for m, _ in self._rec_chunks])
            spk = np.concatenate([s for _, s in self._rec_chunks])
        return np.stack([mic, spk], axis=1)
