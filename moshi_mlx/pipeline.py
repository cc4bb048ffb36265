"""The engine's three stages on three threads, so that a frame costs the slowest stage, not their sum.

    frames --> [encode thread] --q--> [LM thread] --q--> [decode thread] --q--> caller (text, in order)

Frame i is encoded while frame i-1 is in the LM and frame i-2 is being decoded. Each stage thread owns
an MLX stream of its own (MLX streams belong to the thread that made them, and MLX releases the GIL while
it computes, so the stages overlap even on a CPU); only evaluated NumPy arrays cross between threads.
The queues are bounded, results come out in input order, and the tokens and audio are exactly those of
the serial `Engine.step` loop: each stage runs the same computation, only the threads differ.

The stage threads live as long as the pipeline, not one run: MLX keeps compiled graphs per thread and
stream, so new threads would trace every compiled step again at each run (a stutter at the start of a
conversation). A warm-up run through the pipeline therefore leaves it ready.

The engine knows nothing of threads: this module drives its stage methods (`encode`, `lm_step`,
`decode`, `finish`, and `settle_*` to leave the state readable by any thread at the end of a run).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Callable

import mlx.core as mx
import numpy as np

from .threads import release_thread_state

if TYPE_CHECKING:
    from .engine import Engine, StepResult

QUEUE_FRAMES = 2
"""Frames each queue holds: enough to keep every stage busy, few enough to add little latency."""


class _Run:
    """One call of `Pipeline.run`: its frames, its stop flag and the first error of any stage."""

    def __init__(self, frames: Iterable[np.ndarray]):
        self.source = iter(frames)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e
        self.stop.set()


class _End:
    """Marks the end of a run in a queue."""

    def __init__(self, run: _Run):
        self.run = run


_QUIT = object()


class Pipeline:
    """Runs an engine's stages on three long-lived threads; one run at a time.

    Args:
        engine: the engine whose stage methods run here.
        queue_frames: frames each inter-stage queue holds.
    """

    def __init__(self, engine: "Engine", queue_frames: int = QUEUE_FRAMES):
        self.engine = engine
        self._runs: queue.Queue = queue.Queue()
        self._to_lm: queue.Queue = queue.Queue(queue_frames)
        self._to_decode: queue.Queue = queue.Queue(queue_frames)
        self._done: queue.Queue = queue.Queue(queue_frames)
        self._lock = threading.Lock()  # one run at a time
        codec, lm = engine.codec_device, engine.lm_device
        self._threads = [
            threading.Thread(target=self._encode_loop, args=(codec,), name="moshi-encode", daemon=True),
            threading.Thread(target=self._stage_loop, name="moshi-lm", daemon=True,
                             args=(lm, self._to_lm, self._to_decode, self._lm_step, engine.settle_lm)),
            threading.Thread(target=self._stage_loop, name="moshi-decode", daemon=True,
                             args=(codec, self._to_decode, self._done, self._decode, engine.settle_decoder)),
        ]
        for t in self._threads:
            t.start()

    # ----------------------------------------------------------------- the caller's side

    def run(self, frames: Iterable[np.ndarray]) -> Iterator["StepResult"]:
        """Streams `frames` through the stages; see `Engine.stream`.

        Closing the iterator early stops the run after the frames in flight; it returns once every stage
        has finished the run, which needs `frames` to yield or end (a live source should end when asked).
        """
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("the engine is already streaming: one stream at a time")
        run, started, ended = _Run(frames), False, False
        try:
            self.engine.settle()  # state made on the caller's stream must be readable from the stage threads
            self._runs.put(run)
            started = True
            while True:
                item = self._done.get()
                if isinstance(item, _End):
                    ended = True
                    break
                if run.stop.is_set():
                    continue  # stopped: drain what is still in flight
                _, t_in, took, token, moshi_codes, pcm = item
                yield self.engine.finish(token, moshi_codes, pcm, latency_s=time.perf_counter() - t_in,
                                         stage_ms=tuple(1000.0 * t for t in took))
        finally:
            run.stop.set()
            if started and not ended:
                while not isinstance(self._done.get(), _End):  # let every stage finish this run
                    pass
            self._lock.release()
        if run.error is not None:
            raise run.error

    def close(self) -> None:
        """Ends the stage threads (after the current run), each freeing its MLX state first.

        Not required before exit: idle stage threads are daemons waiting on a queue, which never run
        again (tests/test_clean_exit.py); a thread that ends, though, must free its MLX state itself.
        """
        if not any(t.is_alive() for t in self._threads):
            return
        self._runs.put(_QUIT)
        for t in self._threads:
            t.join()

    # ----------------------------------------------------------------- the stage threads

    def _encode_loop(self, device: mx.Device) -> None:
        stream = mx.new_stream(device)
        mx.set_default_stream(stream)
        while True:
            run = self._runs.get()
            if run is _QUIT:
                self._to_lm.put(_QUIT)
                release_thread_state(stream)
                return
            try:
                while not run.stop.is_set():
                    try:
                        frame = next(run.source)
                    except StopIteration:
                        break
                    if run.stop.is_set():
                        break
                    t_in = time.perf_counter()
                    codes = self.engine.encode(frame)
                    self._to_lm.put((run, t_in, (time.perf_counter() - t_in,), codes))
            except BaseException as e:  # noqa: BLE001 - handed to the caller, who re-raises it
                run.fail(e)
            self._settle(run, self.engine.settle_encoder)
            self._to_lm.put(_End(run))

    def _stage_loop(self, device: mx.Device, inbox: queue.Queue, outbox: queue.Queue,
                    work: Callable[[tuple], tuple], settle: Callable[[], None]) -> None:
        stream = mx.new_stream(device)
        mx.set_default_stream(stream)
        while True:
            item = inbox.get()
            if item is _QUIT:
                if outbox is not self._done:
                    outbox.put(_QUIT)
                release_thread_state(stream)
                return
            if isinstance(item, _End):
                self._settle(item.run, settle)
                outbox.put(item)
                continue
            run = item[0]
            if run.stop.is_set():
                continue  # the run was stopped: skip the work
            try:
                t0 = time.perf_counter()
                rest = work(item[3:])
                outbox.put((run, item[1], item[2] + (time.perf_counter() - t0,), *rest))
            except BaseException as e:  # noqa: BLE001
                run.fail(e)

    def _lm_step(self, item: tuple) -> tuple:
        (codes,) = item
        return self.engine.lm_step(codes)

    def _decode(self, item: tuple) -> tuple:
        token, moshi_codes = item
        return token, moshi_codes, self.engine.decode(moshi_codes)

    @staticmethod
    def _settle(run: _Run, settle: Callable[[], None]) -> None:
        # Leave the state evaluated: lazy arrays on this thread's stream cannot be read by another thread.
        try:
            settle()
        except BaseException as e:  # noqa: BLE001
            run.fail(e)

