"""The engine's three stages on three threads, so that a frame costs the slowest stage, not their sum.

    frames --> [encode thread] --q--> [LM thread] --q--> [decode thread] --q--> caller (text, in order)

Frame i is encoded while frame i-1 is in the LM and frame i-2 is being decoded. Each stage thread owns
an MLX stream of its own (MLX streams belong to the thread that made them, and MLX releases the GIL while
it computes, so the stages overlap even on a CPU); only evaluated NumPy arrays cross between threads.
The queues are bounded, results come out in input order, and the tokens and audio are exactly those of
the serial `Engine.step` loop: each stage runs the same computation, only the threads differ.

The engine knows nothing of threads: this module drives its stage methods (`encode`, `lm_step`,
`decode`, `finish`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable

import mlx.core as mx
import numpy as np

if TYPE_CHECKING:
    from .engine import Engine, StepResult

QUEUE_FRAMES = 2
"""Frames each queue holds: enough to keep every stage busy, few enough to add no latency."""

_POLL_S = 0.05
"""How often a blocked stage looks whether the pipeline was stopped."""

_END = object()


class _Stopped(Exception):
    """The pipeline was stopped (by the caller, or by another stage's error)."""


class _Stage(threading.Thread):
    """One stage: takes items from `source`, applies `work`, puts the results into `sink`."""

    def __init__(self, name: str, device: mx.Device, source: Callable[[], Any], work: Callable[[Any], Any],
                 sink: "queue.Queue", stop: threading.Event, on_exit: Callable[[], None]):
        super().__init__(name=f"moshi-{name}", daemon=True)
        self.device, self.source, self.work, self.sink, self.stop = device, source, work, sink, stop
        self.on_exit = on_exit
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            mx.set_default_stream(mx.new_stream(self.device))
            while True:
                item = self.source()
                if item is _END:
                    break
                _put(self.sink, self.work(item), self.stop)
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the caller, who re-raises it
            self.error = e
            self.stop.set()
        finally:
            try:
                # Leave the state evaluated: lazy arrays on this thread's stream would be unusable by the
                # next caller (another thread) once this thread has ended.
                self.on_exit()
            except BaseException as e:  # noqa: BLE001
                self.error = self.error or e
                self.stop.set()
            try:
                _put(self.sink, _END, self.stop)
            except _Stopped:
                pass


def _put(q: "queue.Queue", item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _get(q: "queue.Queue", stop: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped from None


def run_pipeline(engine: "Engine", frames: Iterable[np.ndarray]) -> Iterator["StepResult"]:
    """Streams `frames` through the engine's stages on three threads; see `Engine.stream`.

    Stopping early (closing the iterator) stops the stages after their current frame; the encode stage
    may stay blocked inside `frames` until that iterator yields or ends.
    """
    stop = threading.Event()
    to_lm: queue.Queue = queue.Queue(QUEUE_FRAMES)
    to_decode: queue.Queue = queue.Queue(QUEUE_FRAMES)
    done: queue.Queue = queue.Queue(QUEUE_FRAMES)
    source = iter(frames)
    in_source = threading.Event()

    def next_frame():
        in_source.set()
        try:
            frame = next(source)
        except StopIteration:
            return _END
        finally:
            in_source.clear()
        if stop.is_set():
            raise _Stopped
        return time.perf_counter(), frame

    def encode(item):
        t_in, frame = item
        t0 = time.perf_counter()
        codes = engine.encode(frame)
        return t_in, (time.perf_counter() - t0,), codes

    def lm_step(item):
        t_in, took, codes = item
        t0 = time.perf_counter()
        token, moshi_codes = engine.lm_step(codes)
        return t_in, took + (time.perf_counter() - t0,), token, moshi_codes

    def decode(item):
        t_in, took, token, moshi_codes = item
        t0 = time.perf_counter()
        pcm = engine.decode(moshi_codes)
        return t_in, took + (time.perf_counter() - t0,), token, moshi_codes, pcm

    codec, lm = engine.codec_device, engine.lm_device
    stages = [
        _Stage("encode", codec, next_frame, encode, to_lm, stop, engine.settle_encoder),
        _Stage("lm", lm, lambda: _get(to_lm, stop), lm_step, to_decode, stop, engine.settle_lm),
        _Stage("decode", codec, lambda: _get(to_decode, stop), decode, done, stop, engine.settle_decoder),
    ]
    engine.settle()  # states made on the caller's stream must be readable from the stage threads
    for s in stages:
        s.start()
    try:
        while True:
            try:
                item = _get(done, stop)
            except _Stopped:
                break
            if item is _END:
                break
            t_in, took, token, moshi_codes, pcm = item
            yield engine.finish(token, moshi_codes, pcm, latency_s=time.perf_counter() - t_in,
                                stage_ms=tuple(1000.0 * t for t in took))
    finally:
        stop.set()
        for s in stages:
            # The encode stage may be waiting inside the caller's iterator: it ends when that yields.
            if not (s is stages[0] and in_source.is_set()):
                s.join()
    for s in stages:
        if s.error is not None:
            raise s.error
