"""Conditions of an LM (Kyutai's TTS: the speaker voices, the CFG strength, a "control" flag).

A conditioner turns one input into vectors of the LM's width: a lookup table (LUT) for a named value such
as `cfg: "2.0"`, or a projection for a tensor such as the speaker embeddings `[T, 512]`. A missing input
(None, or a tensor's masked positions) gives the conditioner's learnt padding vector instead: that is how
the null conditions of classifier-free guidance are made. The fuser then either sums conditions into
every step's input (`sum`) or concatenates them into the source that the temporal transformer's
cross-attention reads (`cross`), optionally with a sinusoidal position embedding.

The config.json schema is Kyutai's: `conditioners: {name: {"type": "lut"|"tensor", "lut"|"tensor":
{...}}}` and `fuser: {"sum": [...], "cross": [...], "cross_attention_pos_emb", ..._scale}`. Parameter
names follow Kyutai's checkpoints (`condition_provider.conditioners.<name>.{embed,output_proj,
learnt_padding}`). Conditioners compute in float32, as Kyutai keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

SIN_MAX_PERIOD = 10_000.0


@dataclass(frozen=True)
class ConditionerSpec:
    """One conditioner: `kind` "lut" (`n_bins`, `possible_values`) or "tensor"; `dim` is its input width."""

    name: str
    kind: str
    dim: int
    n_bins: int = 0
    possible_values: tuple[str, ...] | None = None
    learn_padding: bool = True


@dataclass(frozen=True)
class ConditioningConfig:
    """The conditioners and how they are fused into the LM."""

    conditioners: tuple[ConditionerSpec, ...]
    sum: tuple[str, ...] = ()
    cross: tuple[str, ...] = ()
    cross_pos_emb: bool = False
    cross_pos_emb_scale: float = 1.0

    @classmethod
    def from_dict(cls, conditioners: dict[str, Any], fuser: dict[str, Any] | None) -> "ConditioningConfig":
        specs = []
        for name, cfg in conditioners.items():
            kind = cfg.get("type")
            args = cfg.get(kind, {}) if isinstance(cfg, dict) else {}
            if kind == "lut":
                if args.get("tokenizer", "noop") != "noop":
                    raise ValueError(f"LM config: conditioner {name}: tokenizer {args['tokenizer']!r} is not supported")
                values = args.get("possible_values")
                specs.append(ConditionerSpec(name, "lut", int(args["dim"]), int(args["n_bins"]),
                                             None if values is None else tuple(str(v) for v in values),
                                             bool(args.get("learn_padding", True))))
            elif kind == "tensor":
                specs.append(ConditionerSpec(name, "tensor", int(args["dim"]),
                                             learn_padding=bool(args.get("learn_padding", True))))
            else:
                raise ValueError(f"LM config: conditioner {name}: type {kind!r} is not supported")
            if args.get("output_bias") or args.get("force_linear") is False:
                raise ValueError(f"LM config: conditioner {name}: only a bias-free output projection is supported")
        fuser = fuser or {}
        if fuser.get("prepend"):
            raise ValueError("LM config: the fuser's `prepend` is not supported")
        names = {s.name for s in specs}
        fused = list(fuser.get("sum", [])) + list(fuser.get("cross", []))
        if set(fused) - names:
            raise ValueError(f"LM config: the fuser names unknown conditioners {sorted(set(fused) - names)}")
        return cls(tuple(specs), tuple(fuser.get("sum", [])), tuple(fuser.get("cross", [])),
                   bool(fuser.get("cross_attention_pos_emb", False)),
                   float(fuser.get("cross_attention_pos_emb_scale", 1.0)))

    def to_dict(self) -> dict[str, Any]:
        """`{"conditioners": ..., "fuser": ...}` in Kyutai's config.json schema."""
        conditioners = {}
        for s in self.conditioners:
            if s.kind == "lut":
                args = {"n_bins": s.n_bins, "dim": s.dim, "tokenizer": "noop",
                        "possible_values": None if s.possible_values is None else list(s.possible_values)}
            else:
                args = {"dim": s.dim}
            if not s.learn_padding:
                args["learn_padding"] = False
            conditioners[s.name] = {"type": s.kind, s.kind: args}
        fuser = {"sum": list(self.sum), "cross": list(self.cross), "cross_attention_pos_emb": self.cross_pos_emb,
                 "cross_attention_pos_emb_scale": self.cross_pos_emb_scale}
        return {"conditioners": conditioners, "fuser": fuser}

    def spec(self, name: str) -> ConditionerSpec:
        for s in self.conditioners:
            if s.name == name:
                return s
        raise KeyError(name)


class LutConditioner(nn.Module):
    """A named value from a fixed list -> one vector (its learnt padding for None)."""

    def __init__(self, spec: ConditionerSpec, out_dim: int):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.n_bins + 1, spec.dim)  # the last row is the padding index
        self.output_proj = nn.Linear(spec.dim, out_dim, bias=False)
        if spec.learn_padding:
            self.learnt_padding = mx.zeros((1, 1, out_dim))

    def index(self, value: str | None) -> int | None:
        """Row of `value`, or None for a missing value. Raises ValueError for a value not in the list."""
        if value is None:
            return None
        values = self.spec.possible_values
        if values is None:
            raise ValueError(f"conditioner {self.spec.name}: no list of values (hashed values are not supported)")
        if value not in values:
            raise ValueError(f"{self.spec.name} must be one of {', '.join(values)}; got {value!r}")
        return values.index(value)

    def __call__(self, values: list[str | None]) -> mx.array:
        """`[B, 1, out_dim]` float32 for B values."""
        rows = [self.index(v) for v in values]
        tokens = mx.array([[self.spec.n_bins if r is None else r] for r in rows])
        cond = self.output_proj(self.embed(tokens).astype(mx.float32))
        present = mx.array([[[0.0 if r is None else 1.0]] for r in rows])
        return _mask(self, cond, present)


class TensorConditioner(nn.Module):
    """A tensor `[T, dim]` with a mask `[T]` -> `[T, out_dim]`; masked positions get the learnt padding."""

    def __init__(self, spec: ConditionerSpec, out_dim: int):
        super().__init__()
        self.spec = spec
        self.output_proj = nn.Linear(spec.dim, out_dim, bias=False)
        if spec.learn_padding:
            self.learnt_padding = mx.zeros((1, 1, out_dim))

    def __call__(self, tensor: mx.array, mask: mx.array) -> mx.array:
        """`tensor [B, T, dim]`, `mask [B, T]` (True = present) -> `[B, T, out_dim]` float32."""
        cond = self.output_proj(tensor.astype(mx.float32))
        return _mask(self, cond, mask.astype(mx.float32)[..., None])


def _mask(module: nn.Module, cond: mx.array, present: mx.array) -> mx.array:
    cond = cond.astype(mx.float32) * present
    if "learnt_padding" in module:
        cond = cond + module.learnt_padding.astype(mx.float32) * (1.0 - present)
    return cond


def sin_embedding(length: int, dim: int, max_period: float = SIN_MAX_PERIOD) -> mx.array:
    """Kyutai's `create_sin_embedding` for positions 0..length-1: `[1, length, dim]` float32, cos then sin."""
    half = dim // 2
    positions = mx.arange(length, dtype=mx.float32)[:, None]
    phase = positions / (max_period ** (mx.arange(half, dtype=mx.float32) / (half - 1)))
    return mx.concatenate([mx.cos(phase), mx.sin(phase)], axis=-1)[None]


class ConditionProvider(nn.Module):
    """Every conditioner of an LM, and the fuser's rule."""

    def __init__(self, config: ConditioningConfig, out_dim: int):
        super().__init__()
        self.config = config
        self.conditioners = {s.name: (LutConditioner(s, out_dim) if s.kind == "lut" else TensorConditioner(s, out_dim))
                             for s in config.conditioners}

    def fuse(self, values: dict[str, list[str | None]], tensors: dict[str, tuple[mx.array, mx.array]]
             ) -> tuple[mx.array | None, mx.array | None]:
        """`(sum [B, 1, dim] or None, cross source [B, S, dim] or None)`, float32.

        Args:
            values: for each LUT conditioner, B values (None = missing: the null condition).
            tensors: for each tensor conditioner, `(tensor [B, T, dim], mask [B, T])`.
        """
        out: dict[str, mx.array] = {}
        for name, module in self.conditioners.items():
            if isinstance(module, LutConditioner):
                if name not in values:
                    raise ValueError(f"no value given for the condition {name!r}")
                out[name] = module(values[name])
            else:
                if name not in tensors:
                    raise ValueError(f"no tensor given for the condition {name!r}")
                out[name] = module(*tensors[name])
        total = None
        for name in self.config.sum:
            total = out[name] if total is None else total + out[name]
        cross = None
        if self.config.cross:
            cross = mx.concatenate([out[name] for name in self.config.cross], axis=1)
            if self.config.cross_pos_emb:
                cross = cross + self.config.cross_pos_emb_scale * sin_embedding(cross.shape[1], cross.shape[2])
        return total, cross
