"""What every thread of ours that ran MLX work must do before it ends."""

from __future__ import annotations

import mlx.core as mx


def release_thread_state(stream: mx.Stream | None = None) -> None:
    """Frees the calling thread's MLX state: call it last in every thread (other than the main one) that ran MLX.

    MLX keeps per-thread state in C++ thread_locals whose destructors take the GIL: the `mx.compile` cache
    (its entries hold Python objects) and the default random key. glibc runs those destructors when the OS
    thread ends, which is after the thread's Python state is gone and after `Thread.join()` has returned.
    If the main thread is finalizing the interpreter by then, taking the GIL ends the thread with
    pthread_exit() inside a noexcept destructor and the process aborts ("terminate called without an
    active exception"). Freed here, while the thread still has its Python state, nothing is left for those
    destructors that needs the GIL. (MLX's own threaded tests end their threads the same way.)

    Args:
        stream: the thread's stream, waited for before it is destroyed (default: the default device's).
    """
    try:
        mx.synchronize(stream)  # no work of this thread's left in flight on the stream destroyed below
    except Exception:  # noqa: BLE001 - a failed evaluation was reported where its result was read
        pass
    mx.clear_streams()  # this thread's compile cache, random key and streams
