"""Causal streaming convolutions with explicit state.

Layout is channels-last, `[B, T, C]`. Each layer's `__call__(x, state)` consumes a chunk of any length that is a
multiple of its stride and updates `state` in place; a fresh state gives the batch result, so feeding a signal in
one chunk or in many gives the same output. No call reads anything back from the device, so a step can run
under `mx.compile` with the state's arrays as its inputs and outputs.

Convolutions are computed as one matmul over a strided view of the input (im2col without a copy in the graph),
by the kernel read as an `[in, out]` matrix (`matmul.py`); `weights.py` converts from PyTorch once, at load,
into that memory order.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .matmul import DerivedArray


@dataclass
class ConvState:
    """History of a causal conv: the last `kernel_eff - stride` input samples.

    Attributes:
        history: `[B, P, C_in]`, zeros before the first chunk.
        first: Replicate-padding convs only: 0-d bool array, True until the first chunk, whose first sample then
            fills `history` (None for zero-padded convs).
    """

    history: mx.array
    first: mx.array | None = None


@dataclass
class ConvTransposeState:
    """The tail of a transposed conv: what its last inputs add to output samples not yet emitted.

    Attributes:
        tail: `[B, M - 1, M * S * C_out]` (M = kernel in strides): the contributions of the last M - 1 input
            steps, M blocks of S output samples each, bias excluded (the first blocks are already emitted).
    """

    tail: mx.array


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
        # MLX conv layout [C_out, K, C_in]; filled by load_weights (memory in [K, C_in, C_out] order).
        self.weight = mx.zeros((out_channels, kernel_size, in_channels))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.replicate_pad = replicate_pad
        self.in_channels = in_channels
        # A causal conv producing T/S outputs from T inputs needs exactly this much past.
        self.history_len = (kernel_size - 1) * dilation + 1 - stride
        self._matrix = DerivedArray(lambda w: w.transpose(1, 2, 0).reshape(-1, w.shape[0]))

    def matrix(self) -> mx.array:
        """The kernel as a `[K * C_in, C_out]` matrix, rows ordered (tap, input channel)."""
        return self._matrix.get(self.weight)

    def make_state(self, batch_size: int, dtype: mx.Dtype = mx.float32) -> ConvState:
        """Zero history for `batch_size` streams."""
        history = mx.zeros((batch_size, self.history_len, self.in_channels), dtype=dtype)
        return ConvState(history, mx.array(True) if self.replicate_pad and self.history_len > 0 else None)

    def __call__(self, x: mx.array, state: ConvState) -> mx.array:
        """Convolve a chunk `x` `[B, T, C_in]` (T a multiple of the stride) -> `[B, T / S, C_out]`."""
        if self.history_len > 0:
            history = state.history
            if state.first is not None:
                # On the device, not with a Python `if`: the flag stays an input of a compiled step.
                history = mx.where(state.first, x[:, :1], history)
                state.first = mx.array(False)
            x = mx.concatenate([history, x], axis=1)
            state.history = x[:, -self.history_len:]
        B, N, C = x.shape
        K, S, D = self.kernel_size, self.stride, self.dilation
        T_out = (N - (K - 1) * D - 1) // S + 1
        # im2col as a strided view (the matmul gathers it); one stream gets 2-D views, which save the
        # reshapes MLX puts around a batched matmul.
        if D == 1:  # taps are adjacent: row t is the K * C contiguous values from t * S on
            shape, strides = (T_out, K * C), (S * C, 1)
        else:
            shape, strides = (T_out, K, C), (S * C, D * C, 1)
        if B > 1:
            shape, strides = (B, *shape), (N * C, *strides)
        if K == 1 and S == 1:
            cols = x.reshape(shape)
        else:
            cols = mx.as_strided(x, shape, strides)
        if D > 1:
            cols = cols.reshape(*shape[:-2], K * C)
        y = (cols @ self.matrix()).reshape(B, T_out, -1)
        if "bias" in self:
            y = y + self.bias  # fused with the activation that follows when compiled
        return y


class StreamingConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d computed as one matmul plus an overlap-add (a sum over a strided view).

    With a kernel of M strides (K' = M * S, the kernel zero-extended if needed), input step t writes M blocks of
    S output samples, at steps t .. t+M-1. Step t is emitted once all its blocks are in; the contributions of
    the last M - 1 inputs wait in the state. This equals PyTorch's transposed conv with its right K - S samples
    trimmed.

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
        self._matrix = DerivedArray(lambda w: w if depthwise else w.reshape(w.shape[0], -1))

    def matrix(self) -> mx.array:
        """The kernel as `[C_in, K' * C_out]` (depthwise: `[K', C]`, as stored)."""
        return self._matrix.get(self.weight)

    def make_state(self, batch_size: int, dtype: mx.Dtype = mx.float32) -> ConvTransposeState:
        """Nothing pending for `batch_size` streams."""
        M, S, C = self.blocks, self.stride, self.out_channels
        return ConvTransposeState(mx.zeros((batch_size, M - 1, M * S * C), dtype=dtype))

    def __call__(self, x: mx.array, state: ConvTransposeState) -> mx.array:
        """Upsample a chunk `x` `[B, T, C_in]` -> `[B, T * S, C_out]`."""
        B, T, _ = x.shape
        S, M, C = self.stride, self.blocks, self.out_channels
        if self.depthwise:
            contrib = (x[:, :, None, :] * self.matrix()).reshape(B, T, M * S * C)
        elif B == 1:  # a 2-D matmul: no reshapes around it
            contrib = (x.reshape(T, -1) @ self.matrix()).reshape(B, T, M * S * C)
        else:
            contrib = x @ self.matrix()
        if M == 1:
            y = contrib.reshape(B, T * S, C)
        else:
            # Output step t sums block m of input step t - m, m = 0..M-1. After the tail's M - 1 rows, those
            # blocks sit at a constant stride in memory: one strided view and a sum over its M axis.
            rows = mx.concatenate([state.tail, contrib], axis=1)
            SC = S * C
            blocks = mx.as_strided(rows, (B, T, M, SC), ((M - 1 + T) * M * SC, M * SC, (M - 1) * SC, 1),
                                   offset=(M - 1) * SC)
            y = blocks.sum(axis=2, keepdims=True).reshape(B, T * S, C)
            state.tail = rows[:, T:]
        if "bias" in self:
            y = y + self.bias
        return y
