"""Mimi's causal transformer with a bounded, preallocated attention window.

Attention window, as Kyutai's PyTorch streams it (one code frame = `step` tokens per call): every layer keeps a
ring of `context` key/value slots and writes the step's tokens *before* attending, so a query at position q
sees key k iff `0 <= k <= q` and k is still in the ring, i.e. `k > last(q) - context`, with last(q) the final
position of q's step. (The last token of a step thus sees `context` positions, the first one `context - 1`.)
The batch path (chunks of many steps) applies the same rule as an explicit mask over the ring plus the chunk,
so batch and streaming attend to the same keys and agree to float rounding, however long the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .config import TransformerConfig

BATCH_CHUNK_TOKENS = 1024
"""Tokens per attention call on the batch path: bounds the `[chunk, chunk + context]` score matrix."""

LAYER_NORM_EPS = 1e-5
"""Kyutai's `create_norm_fn("layer_norm")` epsilon."""


@dataclass
class KVRing:
    """Keys and values of one layer's last `context` positions; slot `p % context` holds position p.

    Attributes:
        keys: `[B, heads, context, head_dim]`, preallocated.
        values: Same shape as `keys`.
    """

    keys: mx.array
    values: mx.array


@dataclass
class TransformerState:
    """Streaming state of one transformer: a KV ring per layer and the count of tokens seen.

    Memory is constant: the rings are allocated once and overwritten by slice.
    """

    layers: list[KVRing]
    offset: int = 0


class _Window:
    """Host-side bookkeeping of one call: positions, ring slots to write and the visibility mask."""

    def __init__(self, offset: int, length: int, context: int, step: int, use_ring_only: bool):
        self.positions = np.arange(offset, offset + length)
        # Slot p % context holds the latest position p written before this call (or -1: empty).
        slots = np.arange(context)
        last = offset - 1
        ring_pos = last - np.mod(last - slots, context)
        ring_pos = np.where(ring_pos >= 0, ring_pos, -1)
        kept = self.positions[-context:]
        if use_ring_only:
            ring_pos = ring_pos.copy()
            ring_pos[kept % context] = kept
            key_pos = ring_pos
        else:
            key_pos = np.concatenate([ring_pos, self.positions])
        self.writes = _slot_runs(kept, context, first_src=length - len(kept))
        step_last = (self.positions // step) * step + step - 1
        q, k = self.positions[:, None], key_pos[None, :]
        self.mask = mx.array((k >= 0) & (k <= q) & (k > step_last[:, None] - context))


def _slot_runs(positions: np.ndarray, context: int, first_src: int) -> list[tuple[int, int, int]]:
    """Split consecutive positions into (slot, source index, length) runs that do not wrap the ring.

    `first_src` is the index of `positions[0]` within the call's tokens.
    """
    runs = []
    i = 0
    while i < len(positions):
        slot = int(positions[i] % context)
        n = min(len(positions) - i, context - slot)
        runs.append((slot, first_src + i, n))
        i += n
    return runs


def _rope_tables(positions: np.ndarray, head_dim: int, max_period: float) -> tuple[mx.array, mx.array]:
    """cos/sin `[T, head_dim / 2]` of interleaved RoPE, in float32 as PyTorch's `apply_rope` computes them."""
    half = head_dim // 2
    exponent = np.arange(half, dtype=np.float32) * np.float32(-math.log(max_period) * 2 / head_dim)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    angles = (positions.astype(np.float32)[:, None] * freqs[None, :]).astype(np.float64)
    return mx.array(np.cos(angles).astype(np.float32)), mx.array(np.sin(angles).astype(np.float32))


def _apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of `x` `[B, H, T, D]`."""
    shape = x.shape
    pairs = x.astype(mx.float32).reshape(*shape[:-1], shape[-1] // 2, 2)
    re, im = pairs[..., 0], pairs[..., 1]
    out = mx.stack([re * cos - im * sin, re * sin + im * cos], axis=-1)
    return out.reshape(shape).astype(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention without biases (PyTorch keys `in_proj_weight`, `out_proj.weight`)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.in_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def __call__(self, x: mx.array, ring: KVRing, window: _Window, cos: mx.array, sin: mx.array,
                 ring_only: bool) -> mx.array:
        B, T, D = x.shape
        qkv = self.in_proj(x).reshape(B, T, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = _apply_rope(qkv[0], cos, sin), _apply_rope(qkv[1], cos, sin), qkv[2]
        if not ring_only:
            keys = mx.concatenate([ring.keys, k], axis=2)
            values = mx.concatenate([ring.values, v], axis=2)
        for slot, src, n in window.writes:
            # Ring update by slice: no reallocation, whatever the stream length.
            ring.keys[:, :, slot:slot + n] = k[:, :, src:src + n]
            ring.values[:, :, slot:slot + n] = v[:, :, src:src + n]
        if ring_only:
            keys, values = ring.keys, ring.values
        out = mx.fast.scaled_dot_product_attention(
            q, keys, values, scale=1.0 / math.sqrt(self.head_dim), mask=window.mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, T, D))


class LayerScale(nn.Module):
    """Per-channel residual scaling (`layer_scale_*.scale`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return x * self.scale


class TransformerLayer(nn.Module):
    """Pre-norm layer: x + ls1 * attn(norm1(x)), then x + ls2 * ff(norm2(x)) with exact-erf GELU."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=LAYER_NORM_EPS)
        self.self_attn = Attention(cfg)
        self.linear1 = nn.Linear(cfg.d_model, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, cfg.d_model, bias=False)
        if cfg.layer_scale is not None:
            self.layer_scale_1 = LayerScale(cfg.d_model)
            self.layer_scale_2 = LayerScale(cfg.d_model)

    def _scale(self, name: str, x: mx.array) -> mx.array:
        return self[name](x) if name in self else x

    def __call__(self, x: mx.array, ring: KVRing, window: _Window, cos: mx.array, sin: mx.array,
                 ring_only: bool) -> mx.array:
        x = x + self._scale("layer_scale_1", self.self_attn(self.norm1(x), ring, window, cos, sin, ring_only))
        h = self.linear1(self.norm2(x))
        h = h * 0.5 * (1.0 + mx.erf(h * (1.0 / math.sqrt(2.0))))
        return x + self._scale("layer_scale_2", self.linear2(h))


class _Layers(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layers = [TransformerLayer(cfg) for _ in range(cfg.num_layers)]


class ProjectedTransformer(nn.Module):
    """The transformer on one side of the quantizer, on `[B, T, C]` latents at the encoder frame rate.

    Args:
        cfg: Transformer shape.
        step: Tokens per streaming step (encoder frames per code frame); sets the window rule above.
    """

    def __init__(self, cfg: TransformerConfig, step: int):
        super().__init__()
        self.cfg = cfg
        self.step = step
        self.transformer = _Layers(cfg)
        if cfg.input_dimension != cfg.d_model:
            self.input_proj = nn.Linear(cfg.input_dimension, cfg.d_model, bias=False)
        if cfg.output_dimension != cfg.d_model:
            self.output_projs = [nn.Linear(cfg.d_model, cfg.output_dimension, bias=False)]

    def make_state(self, batch_size: int, dtype: mx.Dtype = mx.float32) -> TransformerState:
        """Zeroed rings of `context` slots for `batch_size` streams."""
        shape = (batch_size, self.cfg.num_heads, self.cfg.context, self.cfg.head_dim)
        return TransformerState([KVRing(mx.zeros(shape, dtype=dtype), mx.zeros(shape, dtype=dtype))
                                 for _ in range(self.cfg.num_layers)])

    def __call__(self, x: mx.array, state: TransformerState) -> mx.array:
        """Run `x` `[B, T, C]` (T a multiple of `step`) through every layer, advancing `state`."""
        if "input_proj" in self:
            x = self.input_proj(x)
        outs = []
        limit = max(self.step, BATCH_CHUNK_TOKENS // self.step * self.step)
        for start in range(0, x.shape[1], limit):
            outs.append(self._chunk(x[:, start:start + limit], state))
        x = outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=1)
        if "output_projs" in self:
            x = self.output_projs[0](x)
        return x

    def _chunk(self, x: mx.array, state: TransformerState) -> mx.array:
        T = x.shape[1]
        # One step at a time, all needed keys are in the ring once the step is written: attend to it alone.
        ring_only = T <= self.step and state.offset % self.step == 0 and T <= self.cfg.context
        window = _Window(state.offset, T, self.cfg.context, self.step, ring_only)
        cos, sin = _rope_tables(window.positions, self.cfg.head_dim, self.cfg.max_period)
        for layer, ring in zip(self.transformer.layers, state.layers):
            x = layer(x, ring, window, cos, sin, ring_only)
        state.offset += T
        return x
