"""Load Kyutai's PyTorch-layout Mimi checkpoint into `Mimi`: the one place that knows the key and layout map.

For each parameter of our model, `_pytorch_source` names the checkpoint tensor(s) that feed it and how their
layout changes (conv `[out, in, k]` -> `[out, k, in]`, transposed conv `[in, out, k]` -> `[in, k, out]`, 1x1 conv
-> linear, EMA codebook `embedding_sum / clamp(cluster_usage, 1e-5)`). Every parameter must be found with the
right shape and every tensor in the file must be used (or be a known training-only buffer), else a one-line
`MimiLoadError` names the file and the problem.

Convs, linears and codebooks keep those shapes, but their memory is laid out in the `[in, out]` order that the
layers' matmuls read (`matmul.py`), so the matrices are views, not copies.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..constants import MIMI_FILE, MOSHI_CODEBOOKS
from .codec import Mimi
from .config import MimiConfig
from .conv import StreamingConv1d, StreamingConvTranspose1d
from .errors import MimiConfigError, MimiFileNotFoundError, MimiLoadError
from .matmul import in_out_order
from .quantizer import Codebook

CONFIG_FILE = "mimi_config.json"
"""Config in Kyutai's schema, read from beside the weights when present."""

CLUSTER_USAGE_EPS = 1e-5
"""Kyutai's `EuclideanCodebook.epsilon`: floor of the usage count dividing the EMA embedding sum."""

IGNORED_SUFFIXES = ("._codebook._initialized",)
"""Training-only buffers of the checkpoint that inference does not need."""

_ALIASES = {
    # Our name -> the names Kyutai's checkpoints use (published first, then `state_dict()` of moshi 0.2).
    "self_attn.in_proj.weight": ("self_attn.in_proj_weight", "self_attn.in_projs.0.weight"),
    "self_attn.out_proj.weight": ("self_attn.out_proj.weight", "self_attn.out_projs.0.weight"),
}


def load_mimi(path: str | Path, num_codebooks: int = MOSHI_CODEBOOKS, dtype: mx.Dtype | None = None) -> Mimi:
    """Load Mimi from Kyutai's PyTorch-layout safetensors file.

    Args:
        path: The `.safetensors` file, or a folder holding `tokenizer-e351c8d8-checkpoint125.safetensors`.
            A `mimi_config.json` (Kyutai's schema) beside it sets the shape; without one the published preset
            is used.
        num_codebooks: Codebooks `encode` produces, 1..32 for the published model.
        dtype: Weight and activation dtype; None keeps the file's (float32 for the published file).

    Returns:
        The codec, weights evaluated.

    Raises:
        MimiFileNotFoundError: the file does not exist.
        MimiLoadError: the file is unreadable, truncated, or not a Mimi checkpoint for this config.
        MimiConfigError: the config beside the weights is invalid or unsupported.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / MIMI_FILE
    if not path.is_file():
        raise MimiFileNotFoundError(f"{path}: no such file; pass the Mimi .safetensors file or its folder.")
    cfg = _read_config(path.parent / CONFIG_FILE)
    tensors = _read_safetensors(path)
    model = Mimi(cfg, num_codebooks=num_codebooks)
    weights = _convert(model, tensors, path)
    del tensors  # the converted arrays hold what they still need
    model.load_weights(_materialize(model, weights, dtype), strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model


def _read_config(config_path: Path) -> MimiConfig:
    if not config_path.is_file():
        return MimiConfig.published()
    try:
        data = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise MimiConfigError(f"{config_path}: not readable JSON ({e}).") from None
    try:
        return MimiConfig.from_dict(data)
    except MimiConfigError as e:
        raise MimiConfigError(f"{config_path}: {e}") from None


def _read_safetensors(path: Path) -> dict[str, mx.array]:
    """Check the safetensors framing (so truncation is caught before lazy reads), then load."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > size - 8:
                raise ValueError(f"header claims {header_len} bytes but the file has {size}")
            header = json.loads(f.read(header_len))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise MimiLoadError(f"{path}: not a safetensors file ({e}).") from None
    data_len = size - 8 - header_len
    if ends and max(ends) > data_len:
        raise MimiLoadError(f"{path}: truncated: the header needs {max(ends)} bytes of tensor data, the file holds "
                            f"{data_len}; download it again.")
    try:
        return mx.load(str(path), format="safetensors")
    except (RuntimeError, ValueError) as e:
        raise MimiLoadError(f"{path}: cannot read safetensors ({e}).") from None


def _module_at(model: nn.Module, dotted: str) -> nn.Module:
    m = model
    for part in dotted.split("."):
        m = m[int(part)] if isinstance(m, list) else m[part]
    return m


def _parameters(model: Mimi):
    """Each parameter with its leaf name, owning module and candidate checkpoint keys (load and save share it)."""
    for name, param in tree_flatten(model.parameters()):
        prefix, leaf = name.rsplit(".", 1)
        module = _module_at(model, prefix)
        yield name, param, prefix, leaf, module, _pytorch_names(name, module)


def _pytorch_names(name: str, module: nn.Module) -> tuple[str, ...]:
    """Checkpoint keys that may hold our parameter `name` (a leaf of `module`)."""
    prefix, leaf = name.rsplit(".", 1)
    if isinstance(module, Codebook):
        book = prefix.replace(".codebooks.", ".vq.layers.") + "._codebook."
        return (book + "embedding_sum", book + "cluster_usage")
    for ours, theirs in _ALIASES.items():
        if name.endswith(ours):
            return tuple(name[: -len(ours)] + t for t in theirs)
    if prefix in ("downsample", "upsample"):  # wrapped once more by ConvDownsample1d / ConvTrUpsample1d
        inner = "conv" if prefix == "downsample" else "convtr"
        return (f"{prefix}.{inner}.{inner}.{inner}.{leaf}",)
    if isinstance(module, StreamingConv1d):
        return (f"{prefix}.conv.conv.{leaf}",)
    if isinstance(module, StreamingConvTranspose1d):
        return (f"{prefix}.convtr.convtr.{leaf}",)
    return (name,)


def _to_ours(module: nn.Module, leaf: str, t: mx.array) -> tuple[mx.array, tuple[int, ...]]:
    """Convert PyTorch tensor `t` to our layout; also return the PyTorch shape our parameter implies."""
    ours = module[leaf].shape
    if isinstance(module, StreamingConv1d) and leaf == "weight":
        return t.swapaxes(1, 2), (ours[0], ours[2], ours[1])
    if isinstance(module, StreamingConvTranspose1d) and leaf == "weight":
        k, padded = module.kernel_size, module.blocks * module.stride
        if module.depthwise:  # [C, 1, K] -> [K', C]
            expected = (ours[1], 1, k)
            out = t[:, 0, :].T if t.ndim == 3 else t
        else:  # [C_in, C_out, K] -> [C_in, K', C_out]
            expected = (ours[0], ours[2], k)
            out = t.transpose(0, 2, 1) if t.ndim == 3 else t
        if t.shape == expected and padded > k:  # zero taps so the kernel spans whole strides
            pad = [(0, padded - k), (0, 0)] if module.depthwise else [(0, 0), (0, padded - k), (0, 0)]
            out = mx.pad(out, pad)
        return out, expected
    if isinstance(module, nn.Linear) and t.ndim == 3:  # the quantizer's 1x1 Conv1d projections
        return t[..., 0], (*ours, 1)
    return t, ours


def _materialize(model: Mimi, weights: list[tuple[str, mx.array]], dtype: mx.Dtype | None
                 ) -> list[tuple[str, mx.array]]:
    """Cast the converted weights and lay out their memory in the order their layer's matmul reads (shapes
    unchanged; see `matmul.py`), one tensor at a time, so that only one tensor is copied at any moment and the
    file's copy of it is released as soon as it is done (`weights` is emptied on the way)."""
    out = []
    for i in range(len(weights)):
        (name, value), weights[i] = weights[i], None
        if dtype is not None:
            value = value.astype(dtype)
        prefix, leaf = name.rsplit(".", 1)
        module = _module_at(model, prefix)
        if isinstance(module, StreamingConv1d) and leaf == "weight":
            value = in_out_order(value, (1, 2, 0))  # [C_out, K, C_in] read as [K, C_in, C_out]
        elif ((isinstance(module, nn.Linear) and leaf == "weight")
              or (isinstance(module, Codebook) and leaf == "embedding")):
            value = in_out_order(value, (1, 0))  # [out, in] read as [in, out]
        elif isinstance(module, StreamingConvTranspose1d) and leaf == "weight":
            value = mx.contiguous(value)  # [C_in, K', C_out] is already the matmul's [C_in, K' * C_out]
        mx.eval(value)
        out.append((name, value))
    return out


def _convert(model: Mimi, tensors: dict[str, mx.array], path: Path) -> list[tuple[str, mx.array]]:
    """Map every parameter of `model` to its converted checkpoint tensor, checking presence and shapes."""
    out: list[tuple[str, mx.array]] = []
    used: set[str] = set()
    missing: list[str] = []
    for name, param, prefix, leaf, module, candidates in _parameters(model):
        if isinstance(module, Codebook):
            if leaf == "embedding_sq_norm":
                continue  # produced together with `embedding`
            emb_key, usage_key = candidates
            absent = [k for k in candidates if k not in tensors]
            if absent:
                missing += absent
                continue
            emb_sum, usage = tensors[emb_key], tensors[usage_key]
            if emb_sum.shape != param.shape or usage.shape != param.shape[:1]:
                raise MimiLoadError(f"{path}: {emb_key} has shape {emb_sum.shape} and {usage_key} {usage.shape}, "
                                    f"expected {param.shape} and {param.shape[:1]}; is {CONFIG_FILE} right for it?")
            used.update(candidates)
            emb = emb_sum.astype(mx.float32) / mx.maximum(usage.astype(mx.float32), CLUSTER_USAGE_EPS)[:, None]
            out.append((name, emb.astype(emb_sum.dtype)))
            out.append((f"{prefix}.embedding_sq_norm", (emb * emb).sum(axis=-1).astype(emb_sum.dtype)))
            continue
        key = next((k for k in candidates if k in tensors), None)
        if key is None:
            missing.append(candidates[0])
            continue
        used.add(key)
        value, expected = _to_ours(module, leaf, tensors[key])
        if tuple(tensors[key].shape) != tuple(expected):
            raise MimiLoadError(f"{path}: {key} has shape {tuple(tensors[key].shape)}, expected {tuple(expected)}; "
                                f"is {CONFIG_FILE} (or the published preset) right for this file?")
        out.append((name, value))
    extra = sorted(k for k in tensors if k not in used and not k.endswith(IGNORED_SUFFIXES))
    if missing:
        raise MimiLoadError(f"{path}: {len(missing)} tensors missing (first: {missing[0]}) of "
                            f"{len(missing) + len(used)} expected; is this a Mimi checkpoint?")
    if extra:
        raise MimiLoadError(f"{path}: {len(extra)} unexpected tensors (first: {extra[0]}); is this a Mimi checkpoint "
                            f"of this shape (see {CONFIG_FILE})?")
    return out


def pytorch_state_dict(model: Mimi) -> dict[str, mx.array]:
    """Our weights in the published checkpoint's keys and layout (the inverse of loading).

    The codebooks come out as `embedding_sum = embedding`, `cluster_usage = 1`, which loads back exactly.
    Used to write test and benchmark checkpoints that every Mimi implementation can read.
    """
    out: dict[str, mx.array] = {}
    for name, param, prefix, leaf, module, keys in _parameters(model):
        if isinstance(module, Codebook):
            if leaf == "embedding":
                out[keys[0]] = param
                out[keys[1]] = mx.ones((param.shape[0],), dtype=param.dtype)
                out[keys[0].rsplit(".", 1)[0] + "._initialized"] = mx.ones((1,), dtype=param.dtype)
            continue
        if isinstance(module, StreamingConv1d) and leaf == "weight":
            param = param.swapaxes(1, 2)
        elif isinstance(module, StreamingConvTranspose1d) and leaf == "weight":
            k = module.kernel_size
            param = param[:k].T[:, None, :] if module.depthwise else param[:, :k].transpose(0, 2, 1)
        elif isinstance(module, nn.Linear) and prefix.startswith("quantizer."):
            param = param[..., None]
        out[keys[0]] = param
    return out
