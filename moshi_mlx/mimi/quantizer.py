"""Split residual vector quantizer of Mimi.

`rvq_first` (the semantic codebook) and `rvq_rest` (the acoustic ones) both quantize the *same* latent: the
rest is not the residual of the first. Within each, codebooks are residual: codebook i quantizes what the
previous ones left. The decoded latent is the sum of both halves, each through its own output projection.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .config import QuantizerConfig


class Codebook(nn.Module):
    """One codebook; `embedding` and its squared norms are computed at load from Kyutai's EMA buffers."""

    def __init__(self, dim: int, bins: int):
        super().__init__()
        self.embedding = mx.zeros((bins, dim))
        self.embedding_sq_norm = mx.zeros((bins,))

    def encode(self, x: mx.array) -> mx.array:
        """Index of the nearest entry (squared euclidean distance) for each vector of `x` `[..., dim]`."""
        # |x - e|^2 = |x|^2 - 2 x.e + |e|^2; |x|^2 is the same for every entry, so it cannot change the argmin.
        dist = self.embedding_sq_norm - 2.0 * (x @ self.embedding.T)
        return mx.argmin(dist, axis=-1).astype(mx.int32)

    def decode(self, codes: mx.array) -> mx.array:
        """Entries for `codes` `[...]` -> `[..., dim]`."""
        return self.embedding[codes]


class ResidualVQ(nn.Module):
    """Residual VQ with 1x1 input and output projections (PyTorch: 1x1 Conv1d without bias)."""

    def __init__(self, cfg: QuantizerConfig, n_q: int):
        super().__init__()
        self.input_proj = nn.Linear(cfg.input_dimension, cfg.dimension, bias=False)
        self.output_proj = nn.Linear(cfg.dimension, cfg.output_dimension, bias=False)
        self.codebooks = [Codebook(cfg.dimension, cfg.bins) for _ in range(n_q)]

    def encode(self, x: mx.array, n_q: int) -> mx.array:
        """Latent `[B, T, C]` -> codes `[B, n_q, T]` from the first `n_q` codebooks."""
        residual = self.input_proj(x)
        codes = []
        for i, book in enumerate(self.codebooks[:n_q]):
            c = book.encode(residual)
            codes.append(c)
            if i + 1 < n_q:
                residual = residual - book.decode(c)
        return mx.stack(codes, axis=1)

    def decode(self, codes: mx.array) -> mx.array:
        """Codes `[B, K, T]` -> latent `[B, T, C]` (sum of the K entries, then the output projection)."""
        total = None
        for i in range(codes.shape[1]):
            entry = self.codebooks[i].decode(codes[:, i])
            total = entry if total is None else total + entry
        return self.output_proj(total)


class SplitResidualVQ(nn.Module):
    """`rvq_first` on the first `n_q_semantic` codebooks, `rvq_rest` on the others, same input."""

    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        self.n_q_semantic = cfg.n_q_semantic
        self.rvq_first = ResidualVQ(cfg, cfg.n_q_semantic)
        self.rvq_rest = ResidualVQ(cfg, cfg.n_q - cfg.n_q_semantic)

    def encode(self, x: mx.array, num_codebooks: int) -> mx.array:
        """Latent `[B, T, C]` -> int32 codes `[B, num_codebooks, T]`."""
        first = min(num_codebooks, self.n_q_semantic)
        codes = self.rvq_first.encode(x, first)
        if num_codebooks > first:
            codes = mx.concatenate([codes, self.rvq_rest.encode(x, num_codebooks - first)], axis=1)
        return codes

    def decode(self, codes: mx.array) -> mx.array:
        """Codes `[B, K, T]` -> latent `[B, T, C]`."""
        latent = self.rvq_first.decode(codes[:, :self.n_q_semantic])
        if codes.shape[1] > self.n_q_semantic:
            latent = latent + self.rvq_rest.decode(codes[:, self.n_q_semantic:])
        return latent
