"""The real-time heart of the voice chat: one duplex audio callback, an input side and an output side.

The callback (audio thread, real-time priority) only copies: the microphone block into one ring, the next
speaker block out of another (silence when it is empty), that speaker block into a third ring (the echo
canceller's reference, on the microphone's timeline), and it counts status flags and notes where its
blocks sit in time (`latency.CallbackClock`).

The input side (`frames`, a generator the model pulls from: the pipeline's encode thread, or the serial
loop) takes microphone and speaker blocks in pairs, cancels the echo in every block (also the ones skipped
later), hands the blocks to the recording queue, resamples to 24 kHz, bounds the backlog by skipping old
input, and yields 80 ms frames. The output side (`run`) queues each reply for the speaker and keeps the
statistics. No sounddevice import here: tests drive it with a fake stream.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from moshi_mlx.audio.resample import Resampler
from moshi_mlx.audio.ring import SampleRing
from moshi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

from .latency import CallbackClock, LatencyMeter

StepFn = Callable[[np.ndarray], "tuple[np.ndarray, str | None]"]
StreamFn = Callable[[Iterable[np.ndarray]], Iterable[Any]]


@dataclass
class DuplexStats:
    """Counters the live view shows; written by one thread each, read by anyone."""

    callbacks: int = 0
    frames_in: int = 0  # model frames answered
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
    step_ms: deque = field(default_factory=lambda: deque(maxlen=256))  # compute per frame (slowest stage)
    step_ms_total: float = 0.0  # every step, for the session's mean
    pipeline_ms: deque = field(default_factory=lambda: deque(maxlen=256))  # frame in -> result out
    result_times: deque = field(default_factory=lambda: deque(maxlen=64))  # when results came (throughput)
    backlog_frames: int = 0
    echo_cancel: bool = False
    echo_reduction_db: float | None = None  # the canceller's current estimate

    @property
    def mean_step_ms(self) -> float:
        return self.step_ms_total / self.frames_in if self.frames_in else 0.0

    @property
    def xruns(self) -> int:
        return self.input_overflow + self.input_underflow + self.output_underflow + self.output_overflow

    @property
    def frames_per_s(self) -> float:
        """Results per second over the recent ones (12.5 when keeping up with real time)."""
        t = list(self.result_times)
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0


@dataclass
class Reply:
    """What the model gave for one frame (the engine's StepResult has these fields)."""

    pcm: np.ndarray
    text: str | None = None
    compute_ms: float | None = None  # compute per frame (the slowest stage when pipelined), if measured
    latency_s: float | None = None  # frame in -> result out, if the model measured it


class DuplexSession:
    """Connects a sound stream's callback to the model.

    Args:
        step: the model as a per-frame function: one 1920-sample float32 frame at 24 kHz in -> (1920
            samples out, text or None). Or give `stream` instead.
        stream: the model as a stream: an iterable of frames in -> one result per frame, in order, with
            `pcm` and `text` (and optionally `compute_ms`, `latency_s`) attributes (`Engine.stream`).
        device_rate: the stream's sample rate; other than 24 kHz is resampled on the input side.
        block_size: the stream's block size in device samples.
        max_backlog_frames: waiting input beyond this many frames is skipped (oldest first) so that
            latency stays bounded when the model is slower than real time.
        record: queue every block as [mic (after echo cancellation), speaker, raw mic (if cancelling)]
            for `drain_recording`, as the device saw them, on one timeline.
        echo: an echo canceller (`app.echo.EchoCanceller`) at `device_rate`, or None.
        on_text: called with each text piece (output side).
        clock, sleep: injectable for tests.
    """

    def __init__(self, step: StepFn | None = None, *, stream: StreamFn | None = None,
                 device_rate: int = SAMPLE_RATE, block_size: int = FRAME_SIZE, max_backlog_frames: int = 3,
                 record: bool = False, echo=None, on_text: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if (step is None) == (stream is None):
            raise ValueError("give the model as exactly one of step= or stream=")
        self.step_fn, self.stream_fn = step, stream
        self.device_rate = int(device_rate)
        self.block_size = int(block_size)
        self.max_backlog_frames = max(1, int(max_backlog_frames))
        self.on_text = on_text
        self.clock, self.sleep = clock, sleep
        self.stats = DuplexStats(echo_cancel=echo is not None)
        self.echo = echo
        # Rings hold ~2 s: far more than the backlog bound, so the callback never has to drop.
        ring = max(8 * self.block_size, 2 * self.device_rate)
        self.mic = SampleRing(ring)
        self.played = SampleRing(ring)  # what the callback gave the speaker: the canceller's reference
        self.speaker = SampleRing(ring)
        self.timing = CallbackClock(self.device_rate)
        self.latency = LatencyMeter(self.timing)
        self.record = record
        self._recorded: queue.SimpleQueue = queue.SimpleQueue()
        self._to_model = Resampler(self.device_rate, SAMPLE_RATE)
        self._to_device = Resampler(SAMPLE_RATE, self.device_rate)
        self._model_in = SampleRing(4 * FRAME_SIZE + 2 * self.block_size + 64)
        self._mic_read = 0  # device samples taken from the mic ring (skipped ones included)
        self._silent_samples = 0  # consecutive all-zero microphone samples
        self._frame_adc: deque = deque()  # capture time of each yielded frame's last sample, in order
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
        self.played.write(out)
        self.timing.record(frames, got, time_info)

    # ------------------------------------------------------------------ input side
    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        """24 kHz frames for the model until `stop` is set (read by one thread: the model's input)."""
        while not stop.is_set():
            frame = self._next_frame(stop)
            if frame is not None:
                yield frame

    def _take_blocks(self) -> int:
        """Moves what the callback wrote (microphone and speaker, in pairs) through the canceller and the
        recording into the 24 kHz model input; returns the device samples taken."""
        have = min(self.mic.available(), self.played.available())
        # Up-sampling makes more samples than it reads: take only what fits once resampled.
        room = max(1, (self._model_in.space() - 2) * self.device_rate // SAMPLE_RATE)
        n = min(have, room)
        if self.echo is not None:
            n -= n % self.block_size  # whole device blocks: whole 10 ms frames for AEC3, no added delay
        if n <= 0:
            return 0
        raw, played = self.mic.read(n), self.played.read(n)
        self._mic_read += n
        # Levels from the raw microphone: after cancellation a dead microphone still carries comfort noise.
        peak = float(np.abs(raw).max())
        self.stats.input_level = peak
        self._silent_samples = self._silent_samples + n if peak == 0.0 else 0
        self.stats.silent_input_frames = self._silent_samples * SAMPLE_RATE // self.device_rate // FRAME_SIZE
        mic = raw
        if self.echo is not None:
            mic = self.echo.process(raw, played)
            self.stats.echo_reduction_db = self.echo.erle_db
        if self.record:
            channels = (mic, played, raw) if self.echo is not None else (mic, played)
            self._recorded.put(np.stack(channels, axis=1))
        resampled = self._to_model.process(mic)
        self.stats.mic_dropped += len(resampled) - self._model_in.write(resampled)
        return n

    def _next_frame(self, stop: threading.Event) -> np.ndarray | None:
        """Waits (sleeping, not spinning) for one 24 kHz frame; skips old input beyond the backlog bound."""
        while self._model_in.available() < FRAME_SIZE:
            if self._take_blocks():
                continue
            if stop.is_set():
                return None
            missing = FRAME_SIZE - self._model_in.available()
            self.sleep(max(0.001, min(0.02, missing / SAMPLE_RATE)))
        waiting = (self._model_in.available() + self.mic.available() * SAMPLE_RATE // self.device_rate) // FRAME_SIZE
        # Frames handed to the model and not answered yet: a pipelined model holds up to one per stage.
        in_flight = len(self._frame_adc)
        self.stats.backlog_frames = waiting + in_flight
        if waiting + in_flight > self.max_backlog_frames:
            # Too far behind: drop whole frames from the front, keep the newest, so latency cannot grow
            # without bound. Dropped blocks still go through the canceller and into the recording.
            keep = max(1, self.max_backlog_frames - in_flight)
            to_drop, dropped = (waiting - keep) * FRAME_SIZE, 0
            while dropped < to_drop:
                dropped += self._model_in.skip(min(to_drop - dropped, self._model_in.available()))
                if dropped < to_drop and not self._take_blocks():
                    break
            self.stats.skipped_frames += dropped // FRAME_SIZE
            if in_flight >= self.max_backlog_frames:
                self.sleep(0.005)  # the model holds enough frames: the newest waits here, staying fresh
            return None
        frame = self._model_in.read(FRAME_SIZE)
        # The frame's last sample left the microphone ring this many samples (at the device rate) ago.
        in_model_ring = (self._model_in.available() + self._to_model.delay) * self.device_rate // SAMPLE_RATE
        self._frame_adc.append(self.timing.adc_time(max(0, self._mic_read - 1 - in_model_ring)))
        return frame

    # ------------------------------------------------------------------ output side
    def run(self, stop: threading.Event) -> None:
        """Answers every frame until `stop` is set; an exception ends it and is kept for the caller."""
        results = None
        try:
            if self.stream_fn is not None:
                results = self.stream_fn(self.frames(stop))
            else:
                results = self._serial(self.frames(stop))
            for result in results:
                self._answer(result)
                if stop.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - kept for the main thread, which reports it
            self.error = e
        finally:
            stop.set()
            if results is not None and hasattr(results, "close"):
                results.close()  # ends the model's run (a pipeline finishes its frames in flight)

    def _serial(self, frames: Iterable[np.ndarray]) -> Iterator[Reply]:
        for frame in frames:
            t0 = self.clock()
            pcm, text = self.step_fn(frame)
            ms = 1000.0 * (self.clock() - t0)
            yield Reply(pcm, text, ms, ms / 1000.0)

    def _answer(self, result) -> None:
        st = self.stats
        step_ms = getattr(result, "compute_ms", None)
        if step_ms is not None:
            st.step_ms.append(step_ms)
            st.step_ms_total += step_ms
        latency_s = getattr(result, "latency_s", None)
        if latency_s is not None:
            st.pipeline_ms.append(1000.0 * latency_s)
        st.result_times.append(self.clock())
        st.frames_in += 1
        adc = self._frame_adc.popleft() if self._frame_adc else None
        reply = np.asarray(result.pcm, dtype=np.float32).reshape(-1)
        self.latency.reply_queued(adc, self.speaker_written)
        self.speaker.write(self._to_device.process(reply))
        st.frames_out += 1
        self.latency.resolve()
        if result.text and self.on_text is not None:
            self.on_text(result.text)

    @property
    def speaker_written(self) -> int:
        """Device samples of reply audio written so far (the next reply starts there)."""
        return self.speaker.total_written

    # ------------------------------------------------------------------ recording
    def flush_input(self) -> None:
        """Once the model has stopped: moves the blocks still in the rings through the canceller and into
        the recording (main thread, after the input side has ended)."""
        while self._take_blocks():
            self._model_in.skip(self._model_in.available())

    def drain_recording(self) -> list[np.ndarray]:
        """Blocks recorded since the last call, float32 [n, channels], in order (main thread)."""
        out = []
        while True:
            try:
                out.append(self._recorded.get_nowait())
            except queue.Empty:
                return out
