"""Token samplers: temperature + top-k, or greedy; pure functions of `(logits, key)`.

The random state is an explicit key (`mx.random.key`), never MLX's global state, so the samplers can be
compiled into a larger function and a seed reproduces a run exactly.
"""

from __future__ import annotations

import mlx.core as mx

from .depformer import Sampler


def greedy(logits: mx.array, key: mx.array | None = None) -> mx.array:
    """Argmax over the last axis (temperature 0)."""
    del key  # greedy needs no randomness; same signature as the other samplers
    return mx.argmax(logits, axis=-1).astype(mx.int32)


def make_sampler(temperature: float, top_k: int, vocab: int) -> Sampler:
    """A sampler `(logits [..., vocab] float32, key) -> tokens [...] int32`.

    Args:
        temperature: Softmax temperature; 0 (or less) means greedy.
        top_k: Sample among the `top_k` most likely tokens; 0 (or >= vocab) means no top-k cut.
        vocab: Size of the last axis of the logits it will see.

    Raises:
        ValueError: On a negative top-k.
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if temperature <= 0:
        return greedy
    inv_temp = 1.0 / float(temperature)
    cut = 0 < top_k < vocab

    def sample(logits: mx.array, key: mx.array) -> mx.array:
        scaled = logits.astype(mx.float32) * inv_temp
        if cut:
            # Everything below the k-th largest logit is out (ties with it stay in, as probability mass).
            kth = mx.min(mx.topk(scaled, top_k, axis=-1), axis=-1, keepdims=True)
            scaled = mx.where(scaled < kth, mx.array(-mx.inf, dtype=scaled.dtype), scaled)
        return mx.random.categorical(scaled, axis=-1, key=key).astype(mx.int32)

    return sample
