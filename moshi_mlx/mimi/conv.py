"""Causal streaming convolutions with explicit state.

Layout is channels-last, `[B, T, C]`, as MLX convolutions expect. Each layer's `__call__(x, state)` consumes a
chunk of any length that is a multiple of its stride and updates `state` in place; a fresh state gives the
batch result, so feeding a signal in one chunk or in many gives the same output.

Weights are held in the layout the computation wants; `weights.py` converts from PyTorch once, at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn


@dataclass
class ConvState:
    """History of a causal conv: the last `kernel_eff - stride` input samples.

    Attributes:
        history: `[B, P, C_in]`, zeros before the first chunk.
        first: True until the first chunk; replicate padding then fills `history` with the first sample.
    """

    history: mx.array
    first: bool = True


@dataclass
class ConvTransposeState:
    """Pending output of a transposed conv: what its past inputs add to samples not yet emitted.

    Attributes:
        partial: `[B, K' - S, C_out]` (K' = kernel rounded up to a multiple of the stride), bias excluded.
    """

    partial: mx.array


class StreamingConv1d(nn.Module):
    """Causal Conv1d: left context comes from the state, never from padding the right.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel taps.
        stride: Stride; chunks must be a multiple of it.
        dilation: Kernel dilation.
        bias: Whether the conv has a bias.
        replicate_pad: Fill the initial history with the first input sample instead of zeros.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, bias: bool = True, replicate_pad: bool = False):
        super().__init__()
        # MLX layout [C_out, K, C_in]; filled by load_weights.
        self.weight = mx.zeros((out_channels, kernel_size, in_channels))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.stride = stride
        self.dilation = dilation
        self.replicate_pad = replicate_pad
        self.in_channels = in_channels
        # A causal conv producing T/S outputs from T inputs needs exactly this much past.
        self.history_len = (kernel_size - 1) * dilation + 1 - stride

    def make_state(self, batch_size: int, dtype: mx.Dtype = mx.float32) -> ConvState:
        """Zero history for `batch_size` streams."""
        return ConvState(mx.zeros((batch_size, self.history_len, self.in_channels), dtype=dtype))

    def __call__(self, x: mx.array, state: ConvState) -> mx.array:
        """Convolve a chunk `x` `[B, T, C_in]` (T a multiple of the stride) -> `[B, T / S, C_out]`."""
        if self.history_len > 0:
            history = state.history
            if self.replicate_pad and state.first:
                history = mx.broadcast_to(x[:, :1], history.shape)
            x = mx.concatenate([history, x], axis=1)
            state.history = x[:, -self.history_len:]
        state.first = False
        y = mx.conv1d(x, self.weight, stride=self.stride, dilation=self.dilation)
        if "bias" in self:
            y = y + self.bias
        return y


class StreamingConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d computed as one matmul plus an overlap-add.

    With a kernel of M strides (K' = M * S, the kernel zero-extended if needed), input step t writes M blocks of
    S output samples, at steps t .. t+M-1. Step t is emitted once all its blocks are in; the blocks that land
    later wait in the state. This equals PyTorch's transposed conv with its right K - S samples trimmed.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel taps (PyTorch's).
        stride: Upsampling factor.
        bias: Whether the conv has a bias.
        depthwise: One filter per channel (groups == channels), as Mimi's latent upsampler.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 bias: bool = True, depthwise: bool = False):
        super().__init__()
        self.stride = stride
        self.blocks = -(-kernel_size // stride)
        self.kernel_size = kernel_size
        self.depthwise = depthwise
        self.out_channels = out_channels
        padded = self.blocks * stride
        # Layout [C_in, K', C_out] (depthwise: [K', C]); filled by load_weights.
        self.weight = mx.zeros((padded, out_channels) if depthwise else (in_channels, padded, out_channels))
        if bias:
            self.bias = mx.zeros((out_channels,))

    def make_state(self, batch_size: int, dtype: mx.Dtype = mx.float32) -> ConvTransposeState:
        """Nothing pending for `batch_size` streams."""
        pending = (self.blocks - 1) * self.stride
        return ConvTransposeState(mx.zeros((batch_size, pending, self.out_channels), dtype=dtype))

    def __call__(self, x: mx.array, state: ConvTransposeState) -> mx.array:
        """Upsample a chunk `x` `[B, T, C_in]` -> `[B, T * S, C_out]`."""
        B, T, _ = x.shape
        S, M, C = self.stride, self.blocks, self.out_channels
        if self.depthwise:
            contrib = x[:, :, None, :] * self.weight
        else:
            contrib = x @ self.weight.reshape(self.weight.shape[0], -1)
        contrib = contrib.reshape(B, T, M, S, C)
        # Block m of input step t lands on output step t + m: shift it by m steps and sum.
        acc = None
        for m in range(M):
            block = contrib[:, :, m]
            if M > 1:
                block = mx.pad(block, [(0, 0), (m, M - 1 - m), (0, 0), (0, 0)])
            acc = block if acc is None else acc + block
        acc = acc.reshape(B, (T + M - 1) * S, C)
        emit_len = T * S
        if M > 1:
            pending = state.partial.shape[1]
            acc = mx.concatenate([acc[:, :pending] + state.partial, acc[:, pending:]], axis=1)
            state.partial = acc[:, emit_len:]
        y = acc[:, :emit_len]
        if "bias" in self:
            y = y + self.bias
        return y
