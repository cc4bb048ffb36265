"""SEANet convolutional encoder and decoder of Mimi, streaming with explicit state.

Each network is a flat list of layers whose indices match Kyutai's `nn.Sequential` (`encoder.model.<i>`), with
parameter-free ELU entries in the same slots, so checkpoint keys map over with no index arithmetic. A state is
the list of the layers' own states (None for ELUs), created by `make_state` and updated in place.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .config import SeanetConfig
from .conv import StreamingConv1d, StreamingConvTranspose1d

SeanetState = list
"""Per-layer states of a SEANet network, aligned with its `model` list."""


class Elu(nn.Module):
    """ELU with alpha 1, via expm1 as PyTorch computes it (exp(x) - 1 loses digits near 0)."""

    def __call__(self, x: mx.array, state: Any = None) -> mx.array:
        return mx.where(x > 0, x, mx.expm1(mx.minimum(x, 0.0)))

    def make_state(self, batch_size: int, dtype: mx.Dtype = mx.float32) -> None:
        return None


class ResidualBlock(nn.Module):
    """ELU, conv k (dim -> dim / compress), ELU, conv 1 (back to dim), plus the identity shortcut."""

    def __init__(self, dim: int, hidden: int, kernel_size: int, dilation: int):
        super().__init__()
        # Slots 0 and 2 are the ELUs, as in Kyutai's `block` Sequential.
        self.block = [
            Elu(),
            StreamingConv1d(dim, hidden, kernel_size, dilation=dilation),
            Elu(),
            StreamingConv1d(hidden, dim, 1),
        ]

    def make_state(self, batch_size: int, dtype: mx.Dtype = mx.float32) -> SeanetState:
        return [layer.make_state(batch_size, dtype) for layer in self.block]

    def __call__(self, x: mx.array, state: SeanetState) -> mx.array:
        y = x
        for layer, layer_state in zip(self.block, state):
            y = layer(y, layer_state)
        return x + y


class _Sequential(nn.Module):
    """A list of streaming layers applied in order, each with its own state."""

    model: list

    def make_state(self, batch_size: int, dtype: mx.Dtype = mx.float32) -> SeanetState:
        """Fresh state for `batch_size` streams."""
        return [layer.make_state(batch_size, dtype) for layer in self.model]

    def __call__(self, x: mx.array, state: SeanetState) -> mx.array:
        """Run a chunk `[B, T, C]` through every layer, updating `state` in place."""
        for layer, layer_state in zip(self.model, state):
            x = layer(x, layer_state)
        return x


def _residuals(cfg: SeanetConfig, dim: int) -> list[nn.Module]:
    return [
        ResidualBlock(dim, dim // cfg.compress, cfg.residual_kernel_size, cfg.dilation_base**j)
        for j in range(cfg.n_residual_layers)
    ]


class SeanetEncoder(_Sequential):
    """Audio `[B, T, channels]` -> latent `[B, T / hop, dimension]` at the encoder frame rate."""

    def __init__(self, cfg: SeanetConfig):
        super().__init__()
        width = cfg.n_filters
        model: list[nn.Module] = [StreamingConv1d(cfg.channels, width, cfg.kernel_size)]
        for ratio in reversed(cfg.ratios):
            model += _residuals(cfg, width)
            # Kernel twice the stride: each output sees two strides of input.
            model += [Elu(), StreamingConv1d(width, 2 * width, 2 * ratio, stride=ratio)]
            width *= 2
        model += [Elu(), StreamingConv1d(width, cfg.dimension, cfg.last_kernel_size)]
        self.model = model


class SeanetDecoder(_Sequential):
    """Latent `[B, F, dimension]` -> audio `[B, F * hop, channels]`."""

    def __init__(self, cfg: SeanetConfig):
        super().__init__()
        width = cfg.n_filters * 2 ** len(cfg.ratios)
        model: list[nn.Module] = [StreamingConv1d(cfg.dimension, width, cfg.kernel_size)]
        for ratio in cfg.ratios:
            model += [Elu(), StreamingConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio)]
            width //= 2
            model += _residuals(cfg, width)
        model += [Elu(), StreamingConv1d(width, cfg.channels, cfg.last_kernel_size)]
        self.model = model
