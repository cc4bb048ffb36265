"""Building blocks of Moshi's transformers and the temporal (Helium) transformer.

Numerics follow Kyutai's PyTorch reference: RMSNorm computed in float32 with eps 1e-8, interleaved RoPE
(`traditional=True`) computed in float32, no biases, SwiGLU feed-forward (SiLU on the first half).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ..constants import ZERO_TOKEN
from .cache import KVCache, window_mask

RMS_EPS = 1e-8
"""Epsilon of Kyutai's `rms_norm_f32`."""


def embed(table: nn.Module, tokens: mx.array, offset: mx.array | int = 0) -> mx.array:
    """Looks tokens up in an `nn.Embedding` or `nn.QuantizedEmbedding`, `ZERO_TOKEN` giving a zero vector.

    The zero-token rule lives here rather than in an Embedding subclass because quantizing replaces the
    module (and would silently drop the rule). `offset` selects a sub-table of a stacked table.
    """
    y = table(mx.maximum(tokens, 0) + offset)
    return mx.where((tokens == ZERO_TOKEN)[..., None], mx.zeros((), dtype=y.dtype), y)


class RMSNorm(nn.Module):
    """RMSNorm in float32 whatever the activation dtype: `x * alpha * rsqrt(eps + mean(x^2))`, then cast back."""

    def __init__(self, dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.weight = mx.ones((dim,), dtype=mx.float32)
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        y = mx.fast.rms_norm(x.astype(mx.float32), self.weight.astype(mx.float32), self.eps)
        return y.astype(x.dtype)


class SwiGLU(nn.Module):
    """Kyutai's `ActivationGating` with SiLU: `linear_out(silu(a) * b)` where `[a, b] = linear_in(x)`."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear_in = nn.Linear(dim, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.linear_in(x), 2, axis=-1)
        return self.linear_out(nn.silu(gate) * up)


class Attention(nn.Module):
    """Multi-head self-attention projections with a fused `in_proj` laid out `[q | k | v]` x heads x dim."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.in_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def qkv(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Projects `[B, T, D]` (or one position `[B, D]`) to queries, keys and values `[B, heads, T, head_dim]`."""
        b, t = x.shape[0], (x.shape[1] if x.ndim == 3 else 1)
        proj = self.in_proj(x)
        if t == 1:
            # One position: `[B, 1, 3 * D]` already has the memory layout of `[B, 3 * heads, 1, head_dim]`.
            return tuple(mx.split(proj.reshape(b, 3 * self.num_heads, 1, self.head_dim), 3, axis=1))
        q, k, v = mx.split(proj.reshape(b, t, 3 * self.num_heads, self.head_dim).transpose(0, 2, 1, 3), 3, axis=1)
        return q, k, v

    def output(self, attn: mx.array, flat: bool = False) -> mx.array:
        """Merges heads of `[B, heads, T, head_dim]` and projects back to `[B, T, D]` (`[B, D]` if `flat`)."""
        b, _, t, _ = attn.shape
        if flat:
            return self.out_proj(attn.reshape(b, -1))
        merged = attn.reshape(b, 1, -1) if t == 1 else attn.transpose(0, 2, 1, 3).reshape(b, t, -1)
        return self.out_proj(merged)


class CrossAttention(Attention):
    """Attention from the sequence to a fixed source (Kyutai's TTS: the speaker embeddings): no RoPE, no mask.

    The same fused `in_proj` `[3 * D, D]` as self-attention: its first D rows project the queries, the other
    2D the source into keys and values, which are computed once per source (`kv`) and reused at every step.
    """

    def _rows(self, start: int, stop: int) -> mx.array:
        if isinstance(self.in_proj, nn.QuantizedLinear):
            p = self.in_proj
            return mx.dequantize(p.weight[start:stop], p.scales[start:stop], p.biases[start:stop],
                                 p.group_size, p.bits)
        return self.in_proj.weight[start:stop]

    def kv(self, source: mx.array) -> tuple[mx.array, mx.array]:
        """Keys and values `[B, heads, S, head_dim]` of a source `[B, S, D]`."""
        b, n, d = source.shape
        kv = source.astype(self.out_proj_dtype()) @ self._rows(d, 3 * d).T
        k, v = mx.split(kv.reshape(b, n, 2 * self.num_heads, self.head_dim).transpose(0, 2, 1, 3), 2, axis=1)
        return k, v

    def out_proj_dtype(self) -> mx.Dtype:
        p = self.out_proj
        return p.scales.dtype if isinstance(p, nn.QuantizedLinear) else p.weight.dtype

    def __call__(self, x: mx.array, k: mx.array, v: mx.array) -> mx.array:
        b, t, d = x.shape
        q = (x @ self._rows(0, d).T).reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, t, d))


class TransformerLayer(nn.Module):
    """Pre-norm layer of the temporal transformer: RoPE self-attention over a sliding window, then (with
    `cross_attention`) attention to a fixed source after a LayerNorm, then SwiGLU."""

    def __init__(self, dim: int, num_heads: int, hidden: int, max_period: float, context: int,
                 cross_attention: bool = False):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-5)
            self.cross_attention = CrossAttention(dim, num_heads)
        self.norm2 = RMSNorm(dim)
        self.gating = SwiGLU(dim, hidden)
        self.max_period = float(max_period)
        self.context = context

    def _rope(self, x: mx.array, offset: int | mx.array) -> mx.array:
        head_dim = x.shape[-1]
        # RoPE in float32 like the reference; traditional=True is the interleaved [r0, i0, r1, i1, ...] layout.
        y = mx.fast.rope(x.astype(mx.float32), head_dim, traditional=True, base=self.max_period,
                         scale=1.0, offset=offset)
        return y.astype(x.dtype)

    def __call__(self, x: mx.array, cache: KVCache | None = None,
                 cross_kv: tuple[mx.array, mx.array] | None = None) -> mx.array:
        attn = self.self_attn
        q, k, v = attn.qkv(self.norm1(x))
        offset = 0 if cache is None else cache.offset
        q, k = self._rope(q, offset), self._rope(k, offset)
        if cache is None:
            mask = window_mask(x.shape[1], self.context)
        else:
            k, v, mask = cache.update(k, v)
        return self._finish(x, q, k, v, mask, cross_kv)

    def _finish(self, x: mx.array, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None,
                cross_kv: tuple[mx.array, mx.array] | None = None) -> mx.array:
        attn = self.self_attn
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=mask)
        x = x + attn.output(out)
        if "cross_attention" in self:
            if cross_kv is None:
                raise ValueError("this model cross-attends to its conditions: pass their keys and values")
            x = x + self.cross_attention(self.norm_cross(x), *cross_kv)
        return x + self.gating(self.norm2(x))

    def step(self, x: mx.array, keys: mx.array, values: mx.array, offset: mx.array, visible: int,
             cross_kv: tuple[mx.array, mx.array] | None = None) -> tuple[mx.array, mx.array, mx.array]:
        """One position `[B, 1, D]` against a ring cache, as a pure function (compilable: no host values).

        Args:
            x: Input of this position.
            keys: Ring of keys `[B, heads, context, head_dim]`; `values` likewise.
            offset: Absolute position of `x` (int32 scalar array); its slot is `offset % context`.
            visible: Leading slots worth reading (static): every written slot lies below it.

        Returns:
            `(output, keys, values)` with this position written into the ring.
        """
        q, k, v = self.self_attn.qkv(self.norm1(x))
        q, k = self._rope(q, offset), self._rope(k, offset)
        slot = (offset % self.context).reshape(1)
        keys = mx.slice_update(keys, k, slot, axes=(2,))
        values = mx.slice_update(values, v, slot, axes=(2,))
        # Slots past `offset` are unwritten until the ring first fills; later every slot is in the window.
        mask = mx.arange(visible) <= offset
        return self._finish(x, q, keys[:, :, :visible], values[:, :, :visible], mask, cross_kv), keys, values


class Transformer(nn.Module):
    """The temporal transformer: `num_layers` layers over the sum of the stream embeddings."""

    def __init__(self, dim: int, num_heads: int, num_layers: int, hidden: int, max_period: float, context: int,
                 cross_attention: bool = False):
        super().__init__()
        self.layers = [TransformerLayer(dim, num_heads, hidden, max_period, context, cross_attention)
                       for _ in range(num_layers)]

    def cross_kv(self, source: mx.array) -> list[tuple[mx.array, mx.array]]:
        """Every layer's cross-attention keys and values of a source `[B, S, D]` (computed once per source)."""
        return [layer.cross_attention.kv(source) for layer in self.layers]

    def __call__(self, x: mx.array, cache: list[KVCache] | None = None,
                 cross_kv: list[tuple[mx.array, mx.array]] | None = None) -> mx.array:
        """Runs `[B, T, D]` through every layer; with `cache`, the T positions follow the cached ones."""
        for i, layer in enumerate(self.layers):
            x = layer(x, None if cache is None else cache[i], None if cross_kv is None else cross_kv[i])
        return x

    def step(self, x: mx.array, keys: list[mx.array], values: list[mx.array], offset: mx.array, visible: int,
             cross_kv: list[tuple[mx.array, mx.array]] | None = None
             ) -> tuple[mx.array, list[mx.array], list[mx.array]]:
        """One position through every layer against ring caches (see `TransformerLayer.step`)."""
        new_keys, new_values = [], []
        for i, (layer, k, v) in enumerate(zip(self.layers, keys, values)):
            x, k, v = layer.step(x, k, v, offset, visible, None if cross_kv is None else cross_kv[i])
            new_keys.append(k)
            new_values.append(v)
        return x, new_keys, new_values
