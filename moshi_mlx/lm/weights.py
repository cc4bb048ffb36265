"""Loading Moshi LM checkpoints: find the files, pick the config, remap keys, detect quantization.

Two key layouts are read, told apart by their keys:
- MLX (`kyutai/moshiko-mlx-{bf16,q8,q4}`, written by Kyutai's moshi_mlx): our parameter names already.
- PyTorch (`kyutai/moshiko-pytorch-bf16`): fused `in_proj_weight`, `*.alpha` norms `[1, 1, D]`, `emb.I`,
  `depformer_in.K`, `depformer_emb.K`, `depformer_text_emb`, `linears.K`, and per-step depformer matrices
  concatenated along dim 0.
Quantization (which layers, bits, group size) is read from the tensors (`.scales`/`.biases` present), so
no flag has to match the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..constants import LM_FILES
from .config import LmConfig
from .model import Lm, input_vocab_sizes

CONFIG_FILE = "config.json"
_MLX, _TORCH = "mlx", "pytorch"
_SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
_PACKED_BITS = 32  # quantized weights are packed into uint32 words


class WeightsError(ValueError):
    """The checkpoint cannot be read or does not fit the model."""


def find_files(path: str | Path) -> tuple[Path, Path | None]:
    """The LM weights file and the config.json beside it (or None), from a folder or a file path.

    In a folder holding several LM files, the first of `LM_FILES` present wins (bf16, then q8, then q4).
    """
    path = Path(path)
    if path.is_dir():
        for name in LM_FILES.values():
            if (path / name).is_file():
                weights = path / name
                break
        else:
            raise FileNotFoundError(f"no LM weights ({', '.join(LM_FILES.values())}) in {path}")
    elif path.is_file():
        weights = path
    else:
        raise FileNotFoundError(f"LM weights not found: {path}")
    config = weights.parent / CONFIG_FILE
    return weights, config if config.is_file() else None


def read_safetensors(path: Path) -> dict[str, mx.array]:
    """`mx.load` with a one-line error for unreadable files."""
    try:
        weights = mx.load(str(path))
    except Exception as e:  # mlx raises RuntimeError/ValueError variants for truncated or foreign files
        raise WeightsError(f"cannot read {path} as safetensors ({type(e).__name__}: {e})") from None
    if not isinstance(weights, dict) or not weights:
        raise WeightsError(f"{path} holds no tensors")
    return weights


def detect_layout(weights: dict[str, mx.array]) -> str:
    """`"mlx"` or `"pytorch"`, from the key names."""
    if "audio_embs.0.weight" in weights or any(k.startswith("depformer.slices.") for k in weights):
        return _MLX
    if "emb.0.weight" in weights or any(k.endswith(("in_proj_weight", "in_projs.0.weight")) for k in weights):
        return _TORCH
    raise WeightsError("unrecognised LM key layout (neither Kyutai's MLX nor PyTorch checkpoint)")


def _take(weights: dict[str, mx.array], key: str) -> mx.array:
    try:
        return weights.pop(key)
    except KeyError:
        raise WeightsError(f"missing tensor {key!r} in the PyTorch-layout checkpoint") from None


def _chunk(w: mx.array, parts: int, index: int, key: str) -> mx.array:
    if w.shape[0] % parts:
        raise WeightsError(f"{key} has {w.shape[0]} rows, not a multiple of {parts} per-step weight sets")
    rows = w.shape[0] // parts
    return w[index * rows:(index + 1) * rows]


def _fuse_split_projections(w: dict[str, mx.array]) -> None:
    """`self_attn.in_projs.I.weight` (a state_dict of moshi >= 0.2) -> the published fused layout."""
    groups: dict[str, dict[int, mx.array]] = {}
    for key in [k for k in w if ".self_attn.in_projs." in k or ".self_attn.out_projs." in k]:
        head, index, _ = key.rsplit(".", 2)
        groups.setdefault(head, {})[int(index)] = w.pop(key)
    for head, parts in groups.items():
        fused = mx.concatenate([parts[i] for i in sorted(parts)], axis=0)
        prefix, kind = head.rsplit(".", 1)
        w[f"{prefix}.in_proj_weight" if kind == "in_projs" else f"{prefix}.out_proj.weight"] = fused


def _sanitize_torch(weights: dict[str, mx.array], cfg: LmConfig) -> dict[str, mx.array]:
    w = dict(weights)
    _fuse_split_projections(w)
    out: dict[str, mx.array] = {}
    out["text_emb.weight"] = _take(w, "text_emb.weight")
    for key in [k for k in w if k.startswith(("text_emb.", "condition_provider."))]:
        out[key] = w.pop(key)  # the demux projections, the conditioners: same names in both layouts
    out["text_linear.weight"] = _take(w, "text_linear.weight")
    out["out_norm.weight"] = _take(w, "out_norm.alpha").reshape(-1)
    for i in range(cfg.n_q):
        out[f"audio_embs.{i}.weight"] = _take(w, f"emb.{i}.weight")
    for key in [k for k in w if k.startswith("extra_heads.")]:
        out[key] = w.pop(key)  # same names in both layouts
    for key in [k for k in w if k.startswith("transformer.")]:
        value = w.pop(key)
        if key.endswith(".alpha"):
            key, value = key[:-len(".alpha")] + ".weight", value.reshape(-1)
        out[key.replace(".in_proj_weight", ".in_proj.weight")] = value
    sets = cfg.depformer_num_weight_sets
    per_step = cfg.depformer_weights_per_step
    # Shared tensors (norms, non-per-step matrices) feed several slices: pop them once, reuse the array.
    popped: dict[str, mx.array] = {}

    def pop_once(key: str) -> mx.array:
        if key not in popped:
            popped[key] = _take(w, key)
        return popped[key]

    for k in range(cfg.dep_q):
        s = cfg.depformer_weight_index(k)
        p = f"depformer.slices.{k}"
        out[f"{p}.linear_in.weight"] = pop_once(f"depformer_in.{cfg.depformer_in_index(k)}.weight")
        out[f"{p}.linear_out.weight"] = pop_once(f"linears.{k}.weight")
        emb = "depformer_text_emb" if k == 0 else f"depformer_emb.{k - 1}"
        out[f"{p}.emb.weight"] = pop_once(f"{emb}.weight")
        for part in ("low_rank", "out1", "out2"):  # low-rank and demultiplexed tables (Kyutai's TTS)
            if f"{emb}.{part}.weight" in w or f"{emb}.{part}.weight" in popped:
                out[f"{p}.emb.{part}.weight"] = pop_once(f"{emb}.{part}.weight")
        for layer in range(cfg.depformer_num_layers):
            src, dst = f"depformer.layers.{layer}", f"{p}.transformer.layers.{layer}"
            out[f"{dst}.norm1.weight"] = pop_once(f"{src}.norm1.alpha").reshape(-1)
            out[f"{dst}.norm2.weight"] = pop_once(f"{src}.norm2.alpha").reshape(-1)
            for name, dst_name in (("self_attn.in_proj_weight", "self_attn.in_proj.weight"),
                                   ("self_attn.out_proj.weight", "self_attn.out_proj.weight")):
                key = f"{src}.{name}"
                out[f"{dst}.{dst_name}"] = _chunk(pop_once(key), sets, s, key)
            gating = f"{src}.gating.{s}" if per_step else f"{src}.gating"
            for name in ("linear_in", "linear_out"):
                out[f"{dst}.gating.{name}.weight"] = pop_once(f"{gating}.{name}.weight")
    if w:
        raise WeightsError(f"{len(w)} unexpected tensors in the PyTorch-layout checkpoint, e.g. {sorted(w)[0]!r}")
    return out


def _stack(out: dict[str, mx.array], sources: list[str], target: str) -> None:
    """Concatenates modules' tensors (float or packed, with their scales/biases) along rows into `target`."""
    for suffix in (".weight", ".scales", ".biases"):
        present = [f"{src}{suffix}" in out for src in sources]
        if not any(present):
            continue
        if not all(present):
            raise WeightsError(f"{target}: the tensors stacked into it are not all quantized (or all not)")
        parts = [out.pop(f"{src}{suffix}") for src in sources]
        if len({p.shape[1:] for p in parts}) != 1 or len({p.dtype for p in parts}) != 1:
            raise WeightsError(f"{target}: the tensors stacked into it differ in width, dtype or quantization")
        out[f"{target}{suffix}"] = mx.concatenate(parts, axis=0)


def sanitize(weights: dict[str, mx.array], config: LmConfig) -> dict[str, mx.array]:
    """Maps either checkpoint layout onto this package's parameter names.

    Kyutai's MLX names are ours except for two stacked tables (see `moshi_mlx.lm.model`): `emb` (text and
    audio input embeddings) and `depformer.linear_in` (every slice's projection). Norm weights are kept
    in float32 (they are applied in float32).
    """
    layout = detect_layout(weights)
    _check_extra_heads(weights, config)
    out = _sanitize_torch(weights, config) if layout == _TORCH else _share_slices(dict(weights), config)
    tables = _stacked_tables(config)
    if any(f"{t}.weight" not in out for t in tables):
        raise WeightsError(f"missing input embeddings: expected {', '.join(tables[:2])}, ... ({len(tables)} tables)")
    _stack(out, tables, "emb")
    _rename_tables(out, _composite_tables(config), to_table=True)
    projections = [f"depformer.slices.{k}.linear_in" for k in range(config.dep_q)]
    if config.has_depformer and any(f"{p}.weight" not in out for p in projections):
        raise WeightsError(f"missing depformer input projections (expected {config.dep_q}, e.g. {projections[0]})")
    if config.has_depformer:
        _stack(out, projections, "depformer.linear_in")
    elif any(k.startswith(("depformer", "linears.")) for k in out):
        raise WeightsError("the weights hold a depth transformer but the config has dep_q=0")
    for key, value in out.items():
        if _keeps_float32(key):
            out[key] = value.astype(mx.float32)
    return out


def _share_slices(out: dict[str, mx.array], config: LmConfig) -> dict[str, mx.array]:
    """Kyutai's MLX layout stores a copy of the depformer's layers in every slice, also where a weight-sharing
    schedule makes them equal (the TTS's 32 slices hold 11 sets): the slices of one set get one array, the
    first slice's, and the copies are never read (arrays from `mx.load` are read when evaluated)."""
    first_of_set: dict[int, int] = {}
    for k in range(config.dep_q):
        first = first_of_set.setdefault(config.depformer_weight_index(k), k)
        for key in [x for x in out if x.startswith(f"depformer.slices.{k}.transformer.")]:
            shared = ".norm1." in key or ".norm2." in key  # norms are shared by every slice
            src = key.replace(f"depformer.slices.{k}.", f"depformer.slices.{0 if shared else first}.", 1)
            if src != key and src in out and out[src].shape == out[key].shape:
                out[key] = out[src]
    return out


def _stacked_tables(config: LmConfig) -> list[str]:
    """Kyutai's names of the input tables stacked into `emb` (a demultiplexed text table stays apart)."""
    text = [] if config.demux_second_stream else ["text_emb"]
    return text + [f"audio_embs.{i}" for i in range(config.n_q)]


def _composite_tables(config: LmConfig) -> list[str]:
    """Embeddings whose table is a child `table` here and the module itself in Kyutai's names."""
    names = ["text_emb"] if config.demux_second_stream else []
    for k in range(config.dep_q):
        if config.depformer_low_rank_embeddings is not None or (k == 0 and config.demux_second_stream):
            names.append(f"depformer.slices.{k}.emb")
    return names


def _rename_tables(out: dict[str, mx.array], modules: list[str], to_table: bool) -> None:
    for module in modules:
        for suffix in (".weight", ".scales", ".biases"):
            theirs, ours = f"{module}{suffix}", f"{module}.table{suffix}"
            src, dst = (theirs, ours) if to_table else (ours, theirs)
            if src in out:
                out[dst] = out.pop(src)


def _check_extra_heads(weights: dict[str, mx.array], config: LmConfig) -> None:
    """Says plainly when the file's extra heads (STT end-of-turn heads) and the config disagree."""
    heads = {k.split(".")[1] for k in weights if k.startswith("extra_heads.")}
    if len(heads) != config.extra_heads_num_heads:
        raise WeightsError(f"the weights hold {len(heads)} extra heads, the config says "
                           f"extra_heads_num_heads={config.extra_heads_num_heads}")


def _keeps_float32(key: str) -> bool:
    """RMSNorm weights (applied in float32) and the conditioners (Kyutai keeps them in float32)."""
    return (key.endswith((".norm1.weight", ".norm2.weight")) or key == "out_norm.weight"
            or key.startswith("condition_provider."))


def to_kyutai_mlx(weights: dict[str, mx.array], config: LmConfig) -> dict[str, mx.array]:
    """Inverse of the stacking in `sanitize`: our parameters as Kyutai's MLX checkpoint names them."""
    out = dict(weights)
    _rename_tables(out, _composite_tables(config), to_table=False)
    splits = {"emb": _stacked_tables(config),
              "depformer.linear_in": [f"depformer.slices.{k}.linear_in" for k in range(config.dep_q)]}
    sizes = {"emb": input_vocab_sizes(config),
             "depformer.linear_in": [config.depformer_dim] * config.dep_q}
    for target, names in splits.items():
        for suffix in (".weight", ".scales", ".biases"):
            if f"{target}{suffix}" not in out:
                continue
            stacked = out.pop(f"{target}{suffix}")
            start = 0
            for name, rows in zip(names, sizes[target]):
                out[f"{name}{suffix}"] = stacked[start:start + rows]
                start += rows
    return out


def quantization_of(model: nn.Module, weights: dict[str, mx.array]) -> dict[str, dict[str, int]]:
    """Per module path, the `{bits, group_size}` its tensors in `weights` were quantized with."""
    spec: dict[str, dict[str, int]] = {}
    for path, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Embedding)) or f"{path}.scales" not in weights:
            continue
        if f"{path}.biases" not in weights:
            raise WeightsError(f"{path} has scales but no biases: only affine quantization is supported")
        in_features = module.weight.shape[-1]
        packed = weights[f"{path}.weight"].shape[-1]
        bits, rest = divmod(_PACKED_BITS * packed, in_features)
        scales = weights[f"{path}.scales"].shape[-1]
        if rest or bits not in _SUPPORTED_BITS or scales == 0 or in_features % scales:
            raise WeightsError(f"{path}: packed width {packed} and {scales} scales do not fit "
                               f"{in_features} inputs at any supported bit width")
        spec[path] = {"bits": bits, "group_size": in_features // scales}
    return spec


def _check_shapes(model: nn.Module, weights: dict[str, mx.array]) -> None:
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        if wrong:
            k = wrong[0]
            detail = f"{k} is {list(weights[k].shape)} in the file, {list(expected[k].shape)} expected"
        elif missing:
            detail = f"{len(missing)} tensors missing, e.g. {missing[0]}"
        else:
            detail = f"{len(extra)} unexpected tensors, e.g. {extra[0]}"
        raise WeightsError(detail)


def _resolve_config(config: LmConfig | dict | str | Path | None, beside: Path | None) -> tuple[LmConfig, str]:
    if isinstance(config, LmConfig):
        return config, "the given config"
    if isinstance(config, dict):
        return LmConfig.from_dict(config), "the given config"
    if config is not None:
        return LmConfig.from_json(config), f"config {config}"
    if beside is not None:
        return LmConfig.from_json(beside), f"config {beside}"
    return LmConfig.preset("moshi_7b"), "the moshi_7b preset"


def load_lm(path: str | Path, dtype: mx.Dtype | None = None,
            config: LmConfig | dict[str, Any] | str | Path | None = None) -> Lm:
    """Loads a Moshi LM from Kyutai's MLX (bf16/q8/q4) or PyTorch checkpoint.

    Args:
        path: Checkpoint folder or LM weights file (`.safetensors`).
        dtype: Activation/float-weight dtype; None keeps the file's (bf16). `mx.float32` on a quantized
            file keeps the packed weights and runs float32 activations.
        config: `LmConfig`, dict in Kyutai's schema, or path to a config.json. Default: the config.json
            beside the weights, else the Moshi 7B preset.

    Returns:
        The model, weights loaded strictly, in eval mode.

    Raises:
        FileNotFoundError: No weights (or config) at the given path.
        WeightsError: Unreadable file, unknown layout, or tensors that do not fit the config.
    """
    weights_file, beside = find_files(path)
    cfg, source = _resolve_config(config, beside)
    weights = read_safetensors(weights_file)
    detect_layout(weights)  # a foreign file fails here, with no hint about configs
    model = Lm(cfg)
    try:
        weights = sanitize(weights, cfg)
        spec = quantization_of(model, weights)
        if spec:
            nn.quantize(model, class_predicate=lambda p, m: spec.get(p, False))
        _check_shapes(model, weights)
    except WeightsError as e:
        raise WeightsError(f"{weights_file.name} does not match {source}: {e}; use the config.json that came "
                           "with these weights") from None
    if dtype is not None:
        # Packed (integer) tensors stay as they are; norms stay float32. An array shared by several
        # parameters (depformer slices of one weight set) is cast once and stays shared.
        cast: dict[int, mx.array] = {}
        for k, v in list(weights.items()):  # the list keeps every source array alive: ids stay unique
            if mx.issubdtype(v.dtype, mx.floating) and not _keeps_float32(k):
                if id(v) not in cast:
                    cast[id(v)] = v.astype(dtype)
                weights[k] = cast[id(v)]
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model
