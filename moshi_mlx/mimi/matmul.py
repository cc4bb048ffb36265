"""Weights as the matmuls read them: `[in, out]` matrices, derived once from the parameters.

MLX's CPU matmul runs about twice as fast on a row-major `[in, out]` right operand as on the transposed view of
an `[out, in]` weight (measured on x86: 4.2 vs 9.1 ms for `[2, 8192] x [8192, 1024]`). Parameters keep their
usual shapes (`nn.Linear` `[out, in]`, conv `[out, k, in]`), but `weights.py` stores their memory in `[in, out]`
order, so the matrix each layer multiplies by is a free view. Layers fetch it with `matrix()`, which keeps the
view until the parameter object is replaced; `prepare_matrices` evaluates them all before `mx.compile` traces a
step, so the compiled graph holds them as constants and re-derives nothing per call.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn


class DerivedArray:
    """An array computed from a parameter, recomputed only when the parameter object changes."""

    __slots__ = ("_make", "_source", "_value")

    def __init__(self, make: Callable[[mx.array], mx.array]):
        self._make = make
        self._source: mx.array | None = None
        self._value: mx.array | None = None

    def get(self, source: mx.array) -> mx.array:
        """The derived array for `source` (the same object on every call until `source` changes)."""
        if self._source is not source:
            self._source, self._value = source, self._make(source)
        return self._value


def in_out_order(weight: mx.array, axes: tuple[int, ...]) -> mx.array:
    """`weight` with the same shape and values, its memory laid out as `weight.transpose(axes)` (row-major).

    Used at load so that `weight.transpose(axes)`, the operand of a matmul, is a row-major view, not a copy.
    """
    inverse = [axes.index(i) for i in range(len(axes))]
    return mx.contiguous(weight.transpose(axes)).transpose(inverse)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters) that multiplies by its cached `[in, out]` matrix."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = False):
        super().__init__(input_dims, output_dims, bias=bias)
        self._matrix = DerivedArray(lambda w: w.T)

    def matrix(self) -> mx.array:
        """The weight as `[in, out]` (a view when `weights.py` laid it out)."""
        return self._matrix.get(self.weight)

    def __call__(self, x: mx.array) -> mx.array:
        if "bias" in self:
            return mx.addmm(self.bias, x, self.matrix())
        return x @ self.matrix()


def prepare_matrices(model: nn.Module) -> None:
    """Derive and evaluate every layer's matmul operand (before tracing a compiled step)."""
    matrices = [m.matrix() for m in model.modules() if callable(getattr(m, "matrix", None))]
    mx.eval(matrices)
