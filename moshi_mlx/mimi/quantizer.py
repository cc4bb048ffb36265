"""Split residual vector quantizer of Mimi.

`rvq_first` (the semantic codebook) and `rvq_rest` (the acoustic ones) both quantize the *same* latent: the
rest is not the residual of the first. Within each, codebooks are residual: codebook i quantizes what the
previous ones left. The decoded latent is the sum of both halves, each through its own output projection.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .config import QuantizerConfig
from .matmul import DerivedArray, Linear


class Codebook(nn.Module):
    """One codebook; `embedding` and its squared norms are computed at load from Kyutai's EMA buffers."""

    def __init__(self, dim: int, bins: int):
        super().__init__()
        self.embedding = mx.zeros((bins, dim))
        self.embedding_sq_norm = mx.zeros((bins,))
        self._matrix = DerivedArray(lambda e: e.T)

    def matrix(self) -> mx.array:
        """The entries as columns, `[dim, bins]` (a view)."""
        return self._matrix.get(self.embedding)

    def encode(self, x: mx.array) -> mx.array:
        """Index of the nearest entry (squared euclidean distance) for each row of `x` `[M, dim]` -> `[M]` uint32."""
        # |x - e|^2 = |x|^2 - 2 x.e + |e|^2; |x|^2 is the same for every entry, so it cannot change the argmin.
        # One fused op: |e|^2 + (-2) (x @ e), the scaling by -2 exact as before.
        dist = mx.addmm(self.embedding_sq_norm, x, self.matrix(), alpha=-2.0)
        return mx.argmin(dist, axis=-1)

    def decode(self, codes: mx.array) -> mx.array:
        """Entries for `codes` `[...]` -> `[..., dim]`."""
        return self.embedding[codes]


class ResidualVQ(nn.Module):
    """Residual VQ with 1x1 input and output projections (PyTorch: 1x1 Conv1d without bias)."""

    def __init__(self, cfg: QuantizerConfig, n_q: int):
        super().__init__()
        self.input_proj = Linear(cfg.input_dimension, cfg.dimension, bias=False)
        self.output_proj = Linear(cfg.dimension, cfg.output_dimension, bias=False)
        self.codebooks = [Codebook(cfg.dimension, cfg.bins) for _ in range(n_q)]

    def encode(self, x: mx.array, n_q: int) -> list[mx.array]:
        """Latent rows `[M, C]` -> the codes of the first `n_q` codebooks, each `[M]` uint32.

        Codebook i quantizes what codebooks 0..i-1 left, so the searches run one after the other.
        """
        residual = self.input_proj(x)
        codes = []
        for i, book in enumerate(self.codebooks[:n_q]):
            codes.append(book.encode(residual))
            if i + 1 < n_q:
                residual = residual - book.decode(codes[-1])
        return codes

    def decode(self, codes: list[mx.array]) -> mx.array:
        """Codes of codebooks 0..K-1 (each `[...]`) -> latent rows `[M, C]`: the sum of the entries, projected."""
        total = None
        for book, c in zip(self.codebooks, codes):
            entry = book.decode(c)
            total = entry if total is None else total + entry
        return self.output_proj(total.reshape(-1, total.shape[-1]))


class SplitResidualVQ(nn.Module):
    """`rvq_first` on the first `n_q_semantic` codebooks, `rvq_rest` on the others, same input."""

    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        self.n_q_semantic = cfg.n_q_semantic
        self.rvq_first = ResidualVQ(cfg, cfg.n_q_semantic)
        self.rvq_rest = ResidualVQ(cfg, cfg.n_q - cfg.n_q_semantic)

    def encode(self, x: mx.array, num_codebooks: int) -> mx.array:
        """Latent `[B, T, C]` -> int32 codes `[B, num_codebooks, T]`."""
        B, T, C = x.shape
        rows = x.reshape(B * T, C)  # 2-D matmuls: no reshapes around them
        first = min(num_codebooks, self.n_q_semantic)
        codes = self.rvq_first.encode(rows, first)
        if num_codebooks > first:
            codes += self.rvq_rest.encode(rows, num_codebooks - first)
        codes = mx.concatenate(codes).reshape(num_codebooks, B, T).astype(mx.int32)
        return codes.transpose(1, 0, 2)

    def decode(self, codes: mx.array) -> mx.array:
        """Codes `[B, K, T]` -> latent `[B, T, C]`."""
        B, K, T = codes.shape
        per_book = mx.split(codes, K, axis=1) if K > 1 else [codes]
        latent = self.rvq_first.decode(per_book[:self.n_q_semantic])
        if K > self.n_q_semantic:
            latent = latent + self.rvq_rest.decode(per_book[self.n_q_semantic:])
        return latent.reshape(B, T, -1)
