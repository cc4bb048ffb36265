"""Mimi's causal transformer with a bounded, preallocated attention window.

Attention window, as Kyutai's PyTorch streams it (one code frame = `step` tokens per call): every layer keeps a
ring of `context` key/value slots and writes the step's tokens *before* attending, so a query at position q
sees key k iff `0 <= k <= q` and k is still in the ring, i.e. `k > last(q) - context`, with last(q) the final
position of q's step. (The last token of a step thus sees `context` positions, the first one `context - 1`.)

A streaming step computes its ring slot, mask and RoPE angles on the device from the state's 0-d position
array, so it reads nothing back and runs unchanged under `mx.compile`. The batch path (chunks of many steps)
builds the same per-step windows on the host and attends each step to the keys its ring would hold, in the
ring's order, so batch and streaming agree to the last bit, however long the input.

Activations are `[B * T, D]` inside the layer stack: 2-D matmuls need no reshapes around them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .config import TransformerConfig
from .matmul import Linear

BATCH_CHUNK_TOKENS = 128
"""Tokens per attention call on the batch path: bounds its gathered keys, `[chunk / step, context]` per layer."""

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

    Memory is constant: the rings are allocated once and overwritten in place.

    Attributes:
        layers: One ring per layer.
        offset: Tokens seen so far, a 0-d int32 array, always a multiple of the step (an int is accepted and
            converted on the next call).
    """

    layers: list[KVRing]
    offset: mx.array


@dataclass
class _StepWindow:
    """Device-side bookkeeping of one streaming step (all arrays, computed from the offset array).

    Attributes:
        start: Ring slot of the step's first token, `[1]` int32, when its tokens are contiguous in the ring.
        slots: Else the ring slot of each token, `[T]` int32 (None when `start` is used).
        mask: `[T, context]` visibility of the ring's slots once the step is written.
    """

    start: mx.array | None
    slots: mx.array | None
    mask: mx.array


class _Window:
    """Host-side bookkeeping of one batch chunk: positions, ring slots to write and the visibility rule.

    `mask` states the rule over the keys `[ring before the chunk, chunk]` (or the ring after the write with
    `use_ring_only`). A chunk of whole steps is attended step by step, each step against the `context` keys a
    streaming ring would hold once that step is written, in the ring's slot order: `gather` picks them from
    `[ring, chunk]` and `step_mask` is the rule over them. So each step sums the same terms in the same order
    as `encode_step` does, and batch and streaming agree to the last bit (near-tie codes cannot part).
    """

    def __init__(self, offset: int, length: int, context: int, step: int, use_ring_only: bool = False):
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
        mask = (k >= 0) & (k <= q) & (k > step_last[:, None] - context)
        self.mask = mx.array(mask)
        if use_ring_only or offset % step or length % step:
            return
        # Per step j: the position slot s holds once step j is written; from the chunk if it is in it, else
        # the old ring's slot s (the same position, or an empty slot that the mask hides).
        n = length // step
        held = step_last[::step, None] - np.mod(step_last[::step, None] - slots[None], context)
        gather = np.where(held >= offset, context + held - offset, slots[None])
        self.gather = mx.array(gather.astype(np.int32))
        rows = np.arange(length).reshape(n, step)
        self.step_mask = mx.array(mask[rows[:, :, None], gather[:, None, :]])


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


def _step_window(positions: mx.array, context: int, step: int) -> _StepWindow:
    """The ring writes and mask of one step at `positions` (`[T, 1]` int32, T = step), all on the device."""
    T = positions.shape[0]
    last = positions[-1:]
    # After the write, slot s holds the latest position <= last that is s modulo context (negative: empty).
    held = last - (last - mx.array(np.arange(context, dtype=np.int32))) % context
    step_last = (positions // step) * step + (step - 1)
    mask = (held >= 0) & (held <= positions) & (held > step_last - context)
    if context % step == 0:
        # A step starts at a multiple of `step`, so its tokens never wrap the ring: one slice write. The clamp
        # only guards memory (a misaligned offset breaks the contract; it must not write past the ring).
        start = mx.minimum(positions[:1, 0] % context, context - T)
        return _StepWindow(start, None, mask)
    return _StepWindow(None, positions[:, 0] % context, mask)


def _rope_tables(positions: mx.array, head_dim: int, max_period: float) -> tuple[mx.array, mx.array]:
    """Factors `[3, 1, T, head_dim / 2, 2]` of interleaved RoPE on (q, k, v), as `x * c + swap(x) * s`.

    Angles are float32 products of float32 positions and frequencies, as PyTorch's `apply_rope` computes them.
    Values pass unrotated (c = 1, s = 0), so q, k and v go through one fused op.
    """
    half = head_dim // 2
    exponent = np.arange(half, dtype=np.float32) * np.float32(-math.log(max_period) * 2 / head_dim)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    # Each angle twice (one per member of a pair): the same float32 product either way.
    angles = positions.astype(mx.float32).reshape(-1, 1, 1) * mx.array(np.repeat(freqs, 2).reshape(half, 2))
    sign = mx.array(np.array([-1.0, 1.0], np.float32))
    is_v = mx.array(np.array([False, False, True]).reshape(3, 1, 1, 1, 1))
    c = mx.where(is_v, 1.0, mx.cos(angles))
    s = mx.where(is_v, 0.0, mx.sin(angles) * sign)
    return c, s


def _rope_qkv(qkv: mx.array, c: mx.array, s: mx.array) -> mx.array:
    """Rotate interleaved pairs of q and k in `qkv` `[B, 3, H, T, D / 2, 2]` (float32 math); v is unchanged.

    Each pair (re, im) becomes (re * cos - im * sin, im * cos + re * sin): the pair times `c`, plus the
    swapped pair (im, re) times `s` = (-sin, sin), the same two products and one sum per value as written out.
    """
    dtype = qkv.dtype
    x = qkv if dtype == mx.float32 else qkv.astype(mx.float32)
    out = x * c + x[..., ::-1] * s
    return out if dtype == mx.float32 else out.astype(dtype)


class Attention(nn.Module):
    """Multi-head self-attention without biases (PyTorch keys `in_proj_weight`, `out_proj.weight`)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.in_proj = Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = Linear(cfg.d_model, cfg.d_model, bias=False)

    def __call__(self, x: mx.array, batch: int, ring: KVRing, window: _Window | _StepWindow, c: mx.array,
                 s: mx.array) -> mx.array:
        """Attend `x` `[batch * T, D]`; `window`: a host `_Window` (batch chunk) or a `_StepWindow`."""
        H, Dh = self.num_heads, self.head_dim
        T = x.shape[0] // batch
        qkv = self.in_proj(x).reshape(batch, T, 3, H, Dh // 2, 2).transpose(0, 2, 3, 1, 4, 5)
        qkv = _rope_qkv(qkv, c, s).reshape(batch, 3 * H, T, Dh)
        q, k, v = mx.split(qkv, 3, axis=1)
        if isinstance(window, _Window):
            out = self._attend_chunk(q, k, v, ring, window)
        else:
            out = self._attend_step(q, k, v, ring, window)
        return self.out_proj(out.reshape(batch * T, H * Dh))

    def _attend_step(self, q: mx.array, k: mx.array, v: mx.array, ring: KVRing, window: _StepWindow) -> mx.array:
        """Streaming step: write its tokens into the ring first, then attend to the ring (PyTorch's order)."""
        if window.start is not None:
            ring.keys = mx.slice_update(ring.keys, k, window.start, axes=(2,))
            ring.values = mx.slice_update(ring.values, v, window.start, axes=(2,))
        else:
            ring.keys[:, :, window.slots] = k
            ring.values[:, :, window.slots] = v
        out = mx.fast.scaled_dot_product_attention(q, ring.keys, ring.values, scale=1.0 / math.sqrt(self.head_dim),
                                                   mask=window.mask)
        return out.transpose(0, 2, 1, 3)

    def _attend_chunk(self, q: mx.array, k: mx.array, v: mx.array, ring: KVRing, window: _Window) -> mx.array:
        """Batch chunk: each step against the keys its streaming ring would hold (see `_Window`)."""
        B, H, T, Dh = q.shape
        n, context = window.gather.shape
        step = T // n
        # Steps become batch entries: [B, H, n, ...] -> [B * n, H, ...].
        keys = mx.concatenate([ring.keys, k], axis=2)[:, :, window.gather]
        keys = keys.transpose(0, 2, 1, 3, 4).reshape(B * n, H, context, Dh)
        values = mx.concatenate([ring.values, v], axis=2)[:, :, window.gather]
        values = values.transpose(0, 2, 1, 3, 4).reshape(B * n, H, context, Dh)
        q = q.reshape(B, H, n, step, Dh).transpose(0, 2, 1, 3, 4).reshape(B * n, H, step, Dh)
        mask = mx.broadcast_to(window.step_mask[None], (B, n, step, context)).reshape(B * n, 1, step, context)
        for slot, src, length in window.writes:
            # Ring update by slice: no reallocation, whatever the stream length.
            ring.keys[:, :, slot:slot + length] = k[:, :, src:src + length]
            ring.values[:, :, slot:slot + length] = v[:, :, src:src + length]
        out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=1.0 / math.sqrt(self.head_dim),
                                                   mask=mask)
        return out.reshape(B, n, H, step, Dh).transpose(0, 1, 3, 2, 4)


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
        self.linear1 = Linear(cfg.d_model, cfg.dim_feedforward, bias=False)
        self.linear2 = Linear(cfg.dim_feedforward, cfg.d_model, bias=False)
        if cfg.layer_scale is not None:
            self.layer_scale_1 = LayerScale(cfg.d_model)
            self.layer_scale_2 = LayerScale(cfg.d_model)

    def _scale(self, name: str, x: mx.array) -> mx.array:
        return self[name](x) if name in self else x

    def __call__(self, x: mx.array, batch: int, ring: KVRing, window, c: mx.array, s: mx.array) -> mx.array:
        """`x` `[batch * T, D]` -> same shape."""
        x = x + self._scale("layer_scale_1", self.self_attn(self.norm1(x), batch, ring, window, c, s))
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
            self.input_proj = Linear(cfg.input_dimension, cfg.d_model, bias=False)
        if cfg.output_dimension != cfg.d_model:
            self.output_projs = [Linear(cfg.d_model, cfg.output_dimension, bias=False)]

    def make_state(self, batch_size: int, dtype: mx.Dtype = mx.float32) -> TransformerState:
        """Zeroed rings of `context` slots for `batch_size` streams."""
        shape = (batch_size, self.cfg.num_heads, self.cfg.context, self.cfg.head_dim)
        return TransformerState([KVRing(mx.zeros(shape, dtype=dtype), mx.zeros(shape, dtype=dtype))
                                 for _ in range(self.cfg.num_layers)], mx.array(0, dtype=mx.int32))

    def __call__(self, x: mx.array, state: TransformerState) -> mx.array:
        """Run `x` `[B, T, C]` (T a multiple of `step`) through every layer, advancing `state`."""
        B, T, _ = x.shape
        if not isinstance(state.offset, mx.array):
            if state.offset % self.step:
                raise ValueError(f"transformer offset must be a multiple of the step {self.step}, "
                                 f"got {state.offset}")
            state.offset = mx.array(state.offset, dtype=mx.int32)
        x = x.reshape(B * T, -1)
        if "input_proj" in self:
            x = self.input_proj(x)
        if T == self.step <= self.cfg.context:
            x = self._step(x, B, state)
        else:
            limit = max(self.step, BATCH_CHUNK_TOKENS // self.step * self.step)
            x = x.reshape(B, T, -1)
            outs = [self._chunk(x[:, start:start + limit], state) for start in range(0, T, limit)]
            x = (outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=1)).reshape(B * T, -1)
        if "output_projs" in self:
            x = self.output_projs[0](x)
        return x.reshape(B, T, -1)

    def _step(self, x: mx.array, batch: int, state: TransformerState) -> mx.array:
        """One streaming step, window and positions from the offset array (no host read)."""
        cfg = self.cfg
        positions = state.offset + mx.array(np.arange(self.step, dtype=np.int32)[:, None])
        window = _step_window(positions, cfg.context, self.step)
        c, s = _rope_tables(positions, cfg.head_dim, cfg.max_period)
        for layer, ring in zip(self.transformer.layers, state.layers):
            x = layer(x, batch, ring, window, c, s)
        state.offset = state.offset + self.step
        return x

    def _chunk(self, x: mx.array, state: TransformerState) -> mx.array:
        """A batch chunk `[B, T, D]`: its windows built on the host from the offset (read back once)."""
        cfg = self.cfg
        B, T, D = x.shape
        offset = state.offset.item()
        if offset % self.step or T % self.step:
            raise ValueError(f"transformer chunks must be whole steps of {self.step} tokens at a step boundary, "
                             f"got {T} tokens at position {offset}")
        window = _Window(offset, T, cfg.context, self.step)
        c, s = _rope_tables(mx.arange(offset, offset + T, dtype=mx.int32), cfg.head_dim, cfg.max_period)
        x = x.reshape(B * T, D)
        for layer, ring in zip(self.transformer.layers, state.layers):
            x = layer(x, B, ring, window, c, s)
        state.offset = mx.array(offset + T, dtype=mx.int32)
        return x.reshape(B, T, D)
