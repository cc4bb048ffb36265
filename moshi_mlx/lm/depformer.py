"""The depth transformer (depformer): Moshi's codebooks of one frame, one after the other.

For codebook k of frame t: `x_k = linear_in_k(h_t) + emb_k(previous token)`, where the previous token is
the text token of step t for k = 0 and codebook k-1's token of step t otherwise. The depformer is causal
over k with no positional embedding, and its attention state lives only within one frame, so it is a plain
function of its inputs here (no cache object to carry across frames). Weights are per step: slice k holds
codebook k's embedding, attention/feed-forward matrices and output head; the dep_q input projections are
stacked in one `linear_in` so that a single matmul computes them all.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .embeddings import DemuxEmbedding, LowRankEmbedding
from .transformer import Attention, RMSNorm, SwiGLU, embed

Sampler = Callable[[mx.array, mx.array], mx.array]
"""`(logits [B, V] float32, key) -> tokens [B] int32`."""


def _embed(table: nn.Module, tokens: mx.array) -> mx.array:
    if isinstance(table, (nn.Embedding, nn.QuantizedEmbedding)):
        return embed(table, tokens)
    return table(tokens)


class DepformerLayer(nn.Module):
    """Pre-norm layer without positional embedding; attends to the codebooks of the frame so far."""

    def __init__(self, dim: int, num_heads: int, hidden: int):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        self.norm2 = RMSNorm(dim)
        self.gating = SwiGLU(dim, hidden)

    def __call__(self, x: mx.array, past: list[tuple[mx.array, mx.array]]) -> mx.array:
        """One codebook `[B, D]`; `past` gathers this layer's keys/values of the earlier codebooks."""
        attn = self.self_attn
        q, k, v = attn.qkv(self.norm1(x))
        past.append((k, v))
        keys = mx.concatenate([p[0] for p in past], axis=2) if len(past) > 1 else k
        values = mx.concatenate([p[1] for p in past], axis=2) if len(past) > 1 else v
        # The newest codebook is last, so attending to everything stored is the causal rule.
        out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=attn.scale)
        x = x + attn.output(out, flat=True)
        return x + self.gating(self.norm2(x))


class SliceTransformer(nn.Module):
    """The depformer layers' weights for one step (codebook)."""

    def __init__(self, dim: int, num_heads: int, num_layers: int, hidden: int):
        super().__init__()
        self.layers = [DepformerLayer(dim, num_heads, hidden) for _ in range(num_layers)]


def _input_embedding(vocab: int, dim: int, low_rank: int | None, demux: bool) -> nn.Module:
    """A slice's input table: plain, low-rank (Kyutai's TTS) and/or demultiplexed (the text one)."""
    if demux:
        return DemuxEmbedding(vocab, low_rank or dim, dim, lift=low_rank is not None)
    if low_rank is not None:
        return LowRankEmbedding(vocab, low_rank, dim)
    return nn.Embedding(vocab, dim)


class DepformerSlice(nn.Module):
    """What codebook k owns: input embedding, layers, head (slices of a weight-sharing schedule hold the
    same arrays)."""

    def __init__(self, emb: nn.Module, dim: int, card: int, num_heads: int, num_layers: int, hidden: int):
        super().__init__()
        self.emb = emb
        self.transformer = SliceTransformer(dim, num_heads, num_layers, hidden)
        self.linear_out = nn.Linear(dim, card, bias=False)


class Depformer(nn.Module):
    """`dep_q` slices; slice 0 embeds the text token, slice k > 0 embeds codebook k-1."""

    def __init__(self, config, hidden: int):
        super().__init__()
        c = config
        dim = c.depformer_dim
        self.linear_in = nn.Linear(c.dim, c.dep_q * dim, bias=False)
        self.slices = [
            DepformerSlice(_input_embedding(c.text_card + 1 if k == 0 else c.card + 1, dim,
                                            c.depformer_low_rank_embeddings, k == 0 and c.demux_second_stream),
                           dim, c.card, c.depformer_num_heads, c.depformer_num_layers, hidden)
            for k in range(c.dep_q)
        ]

    def __call__(self, h: mx.array, first_token: mx.array, *, sampler: Sampler | None = None,
                 key: mx.array | None = None, forced: mx.array | None = None, cfg_coef: float | None = None
                 ) -> tuple[mx.array, mx.array]:
        """Produces one frame of codebooks.

        Args:
            h: Temporal transformer output after `out_norm`, `[B, 1, main_dim]`.
            first_token: Text token of this step, `[B]` (the input of codebook 0).
            sampler: Picks each codebook's token from its float32 logits and a random key.
            key: Random key; split once per codebook.
            forced: Teacher forcing: `[B, dep_q]` tokens to use instead of sampling.
            cfg_coef: Classifier-free guidance: `h` stacks the conditioned batch on the null one (`2B` rows,
                `first_token` too); each codebook samples from `null + (cond - null) * cfg_coef` and feeds
                its token to both halves.

        Returns:
            `(tokens [B, dep_q] int32, logits [B, dep_q, card] float32)` (the mixed logits under CFG).
        """
        if forced is None and sampler is None:
            raise ValueError("Depformer needs a sampler or forced tokens")
        keys = None if forced is not None or key is None else mx.random.split(key, len(self.slices))
        num_layers = len(self.slices[0].transformer.layers)
        past: list[list[tuple[mx.array, mx.array]]] = [[] for _ in range(num_layers)]
        prev = first_token
        tokens, all_logits = [], []
        b = h.shape[0]
        # Codebooks are single positions: working on `[B, D]` keeps reshapes out of the graph.
        projected = self.linear_in(h.reshape(b, -1)).reshape(b, len(self.slices), -1)
        for k, part in enumerate(self.slices):
            x = projected[:, k] + _embed(part.emb, prev)
            for layer, layer_past in zip(part.transformer.layers, past):
                x = layer(x, layer_past)
            logits = part.linear_out(x).astype(mx.float32)
            if cfg_coef is not None:
                cond, null = mx.split(logits, 2, axis=0)
                logits = null + (cond - null) * cfg_coef
            if forced is None:
                token = sampler(logits, None if keys is None else keys[k])
            else:
                token = forced[:, k]
            tokens.append(token)
            all_logits.append(logits)
            prev = token if cfg_coef is None else mx.concatenate([token, token], axis=0)
        return mx.stack(tokens, axis=1), mx.stack(all_logits, axis=1)
