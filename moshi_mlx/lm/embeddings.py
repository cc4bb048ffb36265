"""Token embeddings beyond a plain table: the demultiplexed text stream and low-rank depformer tables.

Demux (Kyutai's TTS, `demux_second_stream`): one text input token carries two streams, `(second + 1) *
card + main` with `card = text_card + 1`, `second = -1` meaning "nothing". Both look up the same table and
are projected by their own matrix: `out1(E[main]) + out2(E[second])` (the second term 0 for -1); the
zero token (-1) embeds to 0. Low rank (`depformer_low_rank_embeddings`): the table is `r` wide and a
linear map lifts it to the model's width; with demux, `out1` / `out2` act on the narrow rows directly and
the lift is not used (the checkpoints still hold it).

The table is a child `nn.Embedding` (`table`) so that quantizing it keeps the projections beside it;
`moshi_mlx.lm.weights` maps Kyutai's `emb.weight` names onto it.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..constants import ZERO_TOKEN


def _lookup(table: nn.Module, tokens: mx.array) -> mx.array:
    return table(mx.maximum(tokens, 0))


class DemuxEmbedding(nn.Module):
    """Embeds demultiplexed tokens of a table of `card` rows, `width` wide, into `dim`.

    `lift` keeps the unused low-rank projection of Kyutai's depformer text table, so that the checkpoint
    loads strictly.
    """

    def __init__(self, card: int, width: int, dim: int, lift: bool = False):
        super().__init__()
        self.card = card
        self.table = nn.Embedding(card, width)
        self.out1 = nn.Linear(width, dim, bias=False)
        self.out2 = nn.Linear(width, dim, bias=False)
        if lift:
            self.low_rank = nn.Linear(width, dim, bias=False)

    def __call__(self, tokens: mx.array) -> mx.array:
        main = tokens % self.card
        second = tokens // self.card - 1
        y = self.out1(_lookup(self.table, main))
        extra = self.out2(_lookup(self.table, second))
        y = y + mx.where((second >= 0)[..., None], extra, mx.zeros((), dtype=extra.dtype))
        return mx.where((tokens == ZERO_TOKEN)[..., None], mx.zeros((), dtype=y.dtype), y)


class LowRankEmbedding(nn.Module):
    """A `width`-wide table lifted to `dim` by a linear map; the zero token embeds to 0."""

    def __init__(self, card: int, width: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(card, width)
        self.low_rank = nn.Linear(width, dim, bias=False)

    def __call__(self, tokens: mx.array) -> mx.array:
        y = self.low_rank(_lookup(self.table, tokens))
        return mx.where((tokens == ZERO_TOKEN)[..., None], mx.zeros((), dtype=y.dtype), y)
