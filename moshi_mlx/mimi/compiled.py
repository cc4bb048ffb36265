"""`mx.compile`d streaming steps of Mimi: one fused graph per 80 ms frame and side.

A step is a pure function `(input, state arrays) -> (output, new state arrays)`: the state objects
(`EncodeState`, `DecodeState`) are flattened into a list of arrays (conv histories, transposed-conv tails, KV
rings, the transformer's 0-d int32 position, the down-sampler's first-call flag), the traced function rebuilds
a state around them, runs the same layer code as the eager path, and returns the arrays it left there. Nothing
in a step depends on a Python value that changes between frames, so a shape is traced once. (MLX keeps its
compiled graphs per thread and stream: a new thread traces again, which is why the pipeline keeps its stage threads.)

The compiled functions hold the weights they traced as constants: `CompiledSteps.for_model` rebuilds them when
the model's parameters are no longer the same array objects (after `load_weights`, `update`, `set_dtype`).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Iterator

import mlx.core as mx
import mlx.nn as nn

from .matmul import prepare_matrices

_BUILD_LOCK = threading.Lock()
"""Serializes (re)building: the pipeline's encode and decode threads may both find the steps stale."""


def state_arrays(state: Any) -> list[mx.array]:
    """Every array of a state object (dataclasses and lists of them), in a fixed order."""
    if isinstance(state, mx.array):
        return [state]
    if isinstance(state, list):
        return [a for item in state for a in state_arrays(item)]
    if dataclasses.is_dataclass(state):
        return [a for f in dataclasses.fields(state) for a in state_arrays(getattr(state, f.name))]
    return []


def set_state_arrays(state: Any, arrays: list[mx.array]) -> None:
    """Put `arrays` (as `state_arrays` lists them) back into `state`, in place."""
    it = iter(arrays)
    try:
        _assign(state, it)
    except StopIteration:
        raise ValueError(f"{len(arrays)} arrays do not fill this {type(state).__name__}") from None
    if next(it, None) is not None:
        raise ValueError(f"{len(arrays)} arrays are more than this {type(state).__name__} holds")


def _assign(node: Any, it: Iterator[mx.array]) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, mx.array):
                node[i] = next(it)
            else:
                _assign(item, it)
    elif dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, mx.array):
                setattr(node, f.name, next(it))
            else:
                _assign(value, it)


def parameter_arrays(model: nn.Module) -> list[mx.array]:
    """Every array held by `model`'s modules (a cheaper walk than `tree_flatten(parameters())`)."""
    arrays: list[mx.array] = []
    stack: list[Any] = [model]
    while stack:
        node = stack.pop()
        for value in node.values() if isinstance(node, dict) else node:
            if isinstance(value, mx.array):
                arrays.append(value)
            elif isinstance(value, (dict, list, tuple)):
                stack.append(value)
    return arrays


class CompiledSteps:
    """The compiled encode and decode steps of one Mimi, valid while its parameters stay the same objects.

    Attributes:
        encode: `(pcm [B, C, frame], encode-state arrays) -> (codes, new arrays)`.
        decode: `(codes [B, K, 1], decode-state arrays) -> (pcm, new arrays)`.
        traces: How many times each side's Python function was traced (for tests: one per shape and stream).
        parameters: The model's arrays when the steps were built (held, so that their ids stay unique).
    """

    def __init__(self, key: tuple, encode: Callable, decode: Callable, new_encode_state: Callable,
                 new_decode_state: Callable):
        self.key = key
        self.traces = {"encode": 0, "decode": 0}
        self.parameters: list[mx.array] = []

        def encode_fn(pcm: mx.array, arrays: list[mx.array]):
            self.traces["encode"] += 1
            state = new_encode_state(pcm.shape[0])
            set_state_arrays(state, arrays)
            codes = encode(pcm, state)
            return codes, state_arrays(state)

        def decode_fn(codes: mx.array, arrays: list[mx.array]):
            self.traces["decode"] += 1
            state = new_decode_state(codes.shape[0])
            set_state_arrays(state, arrays)
            pcm = decode(codes, state)
            return pcm, state_arrays(state)

        self.encode = mx.compile(encode_fn)
        self.decode = mx.compile(decode_fn)

    @classmethod
    def for_model(cls, model: nn.Module, extra_key: tuple, **functions) -> "CompiledSteps":
        """The model's cached steps, rebuilt if its parameters or `extra_key` changed since they were built.

        The steps hold the parameters they were built for, so no new parameter can reuse the id of one of them.
        """
        params = parameter_arrays(model)
        key = (tuple(map(id, params)), extra_key)
        steps = getattr(model, "_compiled_steps", None)
        if steps is not None and steps.key == key:
            return steps
        with _BUILD_LOCK:
            steps = getattr(model, "_compiled_steps", None)
            if steps is None or steps.key != key:
                model._compiled_steps = None  # drop the old graphs (and their constants) first
                prepare_matrices(model)  # evaluated now, so the traces hold them as constants
                steps = cls(key, **functions)
                steps.parameters = params
                model._compiled_steps = steps
        return steps
