"""Sliding-window KV cache of the temporal transformer: preallocated, written by slice.

The window holds exactly `context` positions (a ring buffer): at step t the query attends to key position p
iff 0 <= t - p < context, as Kyutai's PyTorch reference does. Keys are stored already rotated (RoPE uses
the absolute position, which keeps counting past the window), so the order of the slots inside the ring
does not matter to attention and a full ring needs no mask.
"""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """One layer's keys and values for `capacity` positions, shape `[B, heads, capacity, head_dim]`.

    Args:
        batch_size: Batch size B.
        num_heads: Attention heads.
        head_dim: Dimension per head.
        capacity: Window length (the model's `context`).
        dtype: Storage dtype (the model's activation dtype).
    """

    def __init__(self, batch_size: int, num_heads: int, head_dim: int, capacity: int, dtype: mx.Dtype):
        shape = (batch_size, num_heads, capacity, head_dim)
        self.keys = mx.zeros(shape, dtype=dtype)
        self.values = mx.zeros(shape, dtype=dtype)
        self.capacity = capacity
        # Host-side count of positions written: known without reading anything back from the device.
        self.offset = 0

    def update(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array, mx.array | None]:
        """Stores `T` new positions and returns what the new queries attend to.

        Args:
            keys: `[B, heads, T, head_dim]`, already rotated.
            values: Same shape.

        Returns:
            `(keys, values, mask)`: the stored window and a boolean `[T, S]` mask (None when every
            stored position is visible to the single new query).

        Raises:
            ValueError: If a multi-position update would wrap around the ring.
        """
        steps = keys.shape[2]
        start = self.offset % self.capacity
        if steps == 1:
            self.keys[:, :, start:start + 1, :] = keys
            self.values[:, :, start:start + 1, :] = values
            self.offset += 1
            visible = min(self.offset, self.capacity)
            return self.keys[:, :, :visible, :], self.values[:, :, :visible, :], None
        if self.offset + steps > self.capacity:
            raise ValueError(
                f"cannot write {steps} positions at once past the {self.capacity}-position window; "
                "feed them one step at a time")
        end = self.offset + steps
        self.keys[:, :, self.offset:end, :] = keys
        self.values[:, :, self.offset:end, :] = values
        query_pos = mx.arange(self.offset, end)[:, None]
        mask = mx.arange(end)[None, :] <= query_pos
        self.offset = end
        return self.keys[:, :, :end, :], self.values[:, :, :end, :], mask

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


def make_kv_caches(num_layers: int, batch_size: int, num_heads: int, head_dim: int, capacity: int,
                   dtype: mx.Dtype) -> list[KVCache]:
    """One `KVCache` per layer."""
    return [KVCache(batch_size, num_heads, head_dim, capacity, dtype) for _ in range(num_layers)]


def window_mask(steps: int, context: int) -> mx.array:
    """Causal mask of a full sequence restricted to a window: query t sees key p iff 0 <= t - p < context."""
    t = mx.arange(steps)[:, None]
    p = mx.arange(steps)[None, :]
    delta = t - p
    return (delta >= 0) & (delta < context)
