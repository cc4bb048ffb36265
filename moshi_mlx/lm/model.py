"""The Moshi LM: stream embeddings, temporal transformer, text head and depformer.

Parameter names follow Kyutai's MLX checkpoints (`kyutai/moshiko-mlx-*`) except for two fused tables that
`weights.sanitize` builds: `emb` stacks the 1 + n_q input embeddings (text, then every audio stream) so one
gather embeds a step, and `depformer.linear_in` stacks the dep_q projections of the temporal output so one
matmul feeds every codebook.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .cache import KVCache, make_kv_caches
from .conditioning import ConditionProvider
from .config import LmConfig
from .depformer import Depformer, Sampler
from .embeddings import DemuxEmbedding
from .transformer import RMSNorm, Transformer, embed


def input_vocab_sizes(config: LmConfig) -> list[int]:
    """Rows of each table stacked in `Lm.emb`, in stream order: text (unless it is demultiplexed, and so
    embedded apart by `Lm.text_emb`), then the n_q audio streams."""
    text = [] if config.demux_second_stream else [config.text_card + 1]
    return text + [config.card + 1] * config.n_q


class Lm(nn.Module):
    """Moshi's LM (temporal transformer + depth transformer).

    Streaming state lives outside: `make_cache()` builds the temporal transformer's KV caches, and
    `moshi_mlx.lm.generate.Generator(model, ...)` handles delays and sampling (generation is kept
    apart from the model, which knows nothing of it).

    Args:
        config: The architecture.
    """

    def __init__(self, config: LmConfig):
        super().__init__()
        self.config = config
        c = config
        self.emb = nn.Embedding(sum(input_vocab_sizes(c)), c.dim)
        offsets = [0]
        for size in input_vocab_sizes(c)[:-1]:
            offsets.append(offsets[-1] + size)
        self._emb_offsets = mx.array(offsets, dtype=mx.int32)
        if c.demux_second_stream:
            self.text_emb = DemuxEmbedding(c.text_card + 1, c.dim, c.dim)
        self.transformer = Transformer(c.dim, c.num_heads, c.num_layers, c.hidden, c.max_period, c.context,
                                       c.cross_attention)
        self.out_norm = RMSNorm(c.dim)
        self.text_linear = nn.Linear(c.dim, c.text_card, bias=False)
        if c.has_depformer:
            self.depformer = Depformer(c, c.depformer_hidden)
        if c.conditioning is not None:
            self.condition_provider = ConditionProvider(c.conditioning, c.dim)
        # Kept as separate Linears: the checkpoints name them `extra_heads.{i}.weight`.
        self.extra_heads = [nn.Linear(c.dim, c.extra_heads_dim, bias=False)
                            for _ in range(c.extra_heads_num_heads)]

    @property
    def dtype(self) -> mx.Dtype:
        """Activation dtype: the dtype of the float tensors of the text head (its scales when quantized)."""
        head = self.text_linear
        return head.scales.dtype if isinstance(head, nn.QuantizedLinear) else head.weight.dtype

    def make_cache(self, batch_size: int = 1) -> list[KVCache]:
        """Preallocated sliding-window KV caches of the temporal transformer (one per layer)."""
        c = self.config
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return make_kv_caches(c.num_layers, batch_size, c.num_heads, c.head_dim, c.context, self.dtype)

    def embed_inputs(self, tokens: mx.array, condition_sum: mx.array | None = None) -> mx.array:
        """Sums the stream embeddings of `tokens` `[B, 1 + n_q, T]` (text first) into `[B, T, dim]`, plus the
        summed conditions `[B, 1, dim]` when the model has them."""
        if self.config.demux_second_stream:
            audio = embed(self.emb, tokens[:, 1:], self._emb_offsets[None, :, None]).sum(axis=1)
            x = audio + self.text_emb(tokens[:, 0])
        else:
            x = embed(self.emb, tokens, self._emb_offsets[None, :, None]).sum(axis=1)
        if condition_sum is not None:
            x = x + condition_sum.astype(x.dtype)
        return x

    def conditions(self, values: dict[str, list[str | None]] | None = None,
                   tensors: dict[str, tuple[mx.array, mx.array]] | None = None
                   ) -> tuple[mx.array | None, list[tuple[mx.array, mx.array]] | None]:
        """The model's conditions for a batch: `(condition_sum [B, 1, dim] or None, cross_kv or None)`.

        `cross_kv` holds every layer's cross-attention keys and values of the fused source, computed once
        here and passed to every step (see `moshi_mlx.lm.conditioning`).
        """
        if "condition_provider" not in self:
            if values or tensors:
                raise ValueError("this model takes no conditions")
            return None, None
        total, cross = self.condition_provider.fuse(values or {}, tensors or {})
        cross_kv = None
        if cross is not None:
            if not self.config.cross_attention:
                raise ValueError("the fuser has cross conditions but the model no cross-attention")
            cross_kv = self.transformer.cross_kv(cross)
        return total, cross_kv

    def forward_temporal(self, tokens: mx.array, cache: list[KVCache] | None = None,
                         condition_sum: mx.array | None = None,
                         cross_kv: list[tuple[mx.array, mx.array]] | None = None) -> tuple[mx.array, mx.array]:
        """Temporal transformer on inputs `[B, 1 + n_q, T]`.

        Args:
            tokens: Input tokens of every stream (already delayed), text first.
            cache: KV caches from `make_cache()`; the T positions follow those already cached. None runs
                the whole sequence with the causal window mask.

        Returns:
            `(h [B, T, dim], text_logits [B, T, text_card])`, `h` after `out_norm` (the depformer's input).
        """
        c = self.config
        if tokens.ndim != 3 or tokens.shape[1] != 1 + c.n_q:
            raise ValueError(f"tokens must be [B, {1 + c.n_q}, T], got {list(tokens.shape)}")
        h = self.out_norm(self.transformer(self.embed_inputs(tokens, condition_sum), cache, cross_kv))
        return h, self.text_linear(h)

    def temporal_step(self, tokens: mx.array, keys: list[mx.array], values: list[mx.array], offset: mx.array,
                      visible: int, condition_sum: mx.array | None = None,
                      cross_kv: list[tuple[mx.array, mx.array]] | None = None
                      ) -> tuple[mx.array, mx.array, list[mx.array], list[mx.array]]:
        """One step of the temporal transformer as a pure function of its inputs (compilable).

        Args:
            tokens: Inputs of this step `[B, 1 + n_q]`, text first, already delayed.
            keys: Per-layer ring caches (`KVCache.keys`); `values` likewise.
            offset: Position of this step, int32 scalar array.
            visible: Static count of leading ring slots to attend over (>= every written slot).
            condition_sum, cross_kv: The conditions, from `conditions()` (models that have them).

        Returns:
            `(h [B, 1, dim], text_logits [B, 1, text_card], keys, values)`.
        """
        x = self.embed_inputs(tokens[:, :, None], condition_sum)
        x, keys, values = self.transformer.step(x, keys, values, offset, visible, cross_kv)
        h = self.out_norm(x)
        return h, self.text_linear(h), keys, values

    def forward_depformer(self, h: mx.array, text_token: mx.array, *, sampler: Sampler | None = None,
                          key: mx.array | None = None, forced: mx.array | None = None,
                          cfg_coef: float | None = None) -> tuple[mx.array, mx.array]:
        """One frame of Moshi's codebooks from `h` `[B, 1, dim]` (see `Depformer.__call__`).

        A text-only model (dep_q 0) returns empty `[B, 0]` tokens and `[B, 0, card]` logits.
        """
        if not self.config.has_depformer:
            b = h.shape[0]
            return mx.zeros((b, 0), dtype=mx.int32), mx.zeros((b, 0, self.config.card), dtype=mx.float32)
        return self.depformer(h, text_token, sampler=sampler, key=key, forced=forced, cfg_coef=cfg_coef)

    def extra_head_probs(self, h: mx.array) -> mx.array:
        """Softmax of every extra head on the temporal output `h` `[B, T, dim]` (after `out_norm`).

        Returns:
            float32 `[B, T, extra_heads_num_heads, extra_heads_dim]` (a zero-sized head axis when the model
            has none). Kyutai's STT voice agent reads head 2, class 0 as the end-of-turn probability.
        """
        b, t, _ = h.shape
        if not self.extra_heads:
            return mx.zeros((b, t, 0, self.config.extra_heads_dim), dtype=mx.float32)
        logits = mx.stack([head(h) for head in self.extra_heads], axis=2)
        return mx.softmax(logits.astype(mx.float32), axis=-1)

    def __call__(self, tokens: mx.array, step_tokens: mx.array) -> tuple[mx.array, mx.array]:
        """Full-sequence forward with teacher forcing (no cache), for tests and scoring.

        Args:
            tokens: Temporal inputs `[B, 1 + n_q, T]` (delayed as in generation).
            step_tokens: Tokens produced at each step, `[B, T, 1 + dep_q]` (text, then Moshi's codebooks):
                the depformer's inputs.

        Returns:
            `(text_logits [B, T, text_card], audio_logits [B, T, dep_q, card])` (dep_q 0: empty audio).
        """
        h, text_logits = self.forward_temporal(tokens)
        b, t, _ = h.shape
        if not self.config.has_depformer:
            return text_logits, mx.zeros((b, t, 0, self.config.card), dtype=mx.float32)
        flat_h = h.reshape(b * t, 1, -1)
        flat = step_tokens.reshape(b * t, -1)
        _, audio_logits = self.depformer(flat_h, flat[:, 0], forced=flat[:, 1:])
        return text_logits, audio_logits.reshape(b, t, *audio_logits.shape[1:])
