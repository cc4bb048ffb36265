"""Which source tensor (and which rows of it) becomes each tensor of Kyutai's MLX layout.

The target names and shapes come from the model itself (`moshi_mlx.lm.Lm` built lazily from the config, its
parameters renamed by `moshi_mlx.lm.weights.to_kyutai_mlx`), so the conversion validates the source against
the same architecture the loader builds. Building the model allocates nothing: MLX arrays are lazy and the
random initial weights are never evaluated.

PyTorch layout (`kyutai/moshiko-pytorch-bf16`) differences handled here:
- norms are `*.alpha` of shape `[1, 1, D]` (MLX: `*.weight`, `[D]`), the fused attention input is
  `in_proj_weight` (MLX: `in_proj.weight`), input embeddings are `emb.I` (MLX: `audio_embs.I`);
- the depformer is stored once for all steps: per-step attention matrices are concatenated along dim 0
  (`depformer.layers.L.self_attn.in_proj_weight` is `[sets * 3 * d, d]`), per-step feed-forwards are
  `depformer.layers.L.gating.S`, norms are shared by every step; MLX gives each codebook k its own slice
  `depformer.slices.k` holding copies (or the row range) of those.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mlx.utils import tree_flatten

from moshi_mlx.lm.config import LmConfig
from moshi_mlx.lm.model import Lm
from moshi_mlx.lm.weights import to_kyutai_mlx

from . import ConvertError
from .safetensors_stream import TensorInfo

MLX, PYTORCH = "mlx", "pytorch"
FLOAT_DTYPES = ("BF16", "F16", "F32")
QUANT_SUFFIXES = (".scales", ".biases")

_NORM = re.compile(r"^(.*\.)?(norm1|norm2|out_norm)\.weight$")
_SLICE = re.compile(r"^depformer\.slices\.(\d+)\.(.+)$")
_SLICE_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Mapping:
    """One output tensor: its MLX name and shape, and where its data lies in the source file.

    `rows` is the `[start, stop)` range along the source's first axis (the per-step depformer matrices), or
    None for the whole tensor; the bytes are then reinterpreted with `shape` (e.g. `[1, 1, D]` -> `[D]`).
    """

    target: str
    shape: tuple[int, ...]
    source: TensorInfo
    rows: tuple[int, int] | None = None

    @property
    def source_order(self) -> int:
        """File offset of the first byte read, so a plan sorted by it reads the source front to back."""
        start = 0 if self.rows is None else self.rows[0] * self.source.row_bytes
        return self.source.begin + start


def expected_mlx_shapes(config: LmConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of Kyutai's MLX layout for this config, with its shape."""
    params = dict(tree_flatten(Lm(config).parameters()))
    return {k: tuple(v.shape) for k, v in to_kyutai_mlx(params, config).items()}


def is_norm(name: str) -> bool:
    """True for RMSNorm weights (never quantized; 1-D in the MLX layout)."""
    return _NORM.match(name) is not None


def detect_layout(header: dict[str, TensorInfo]) -> str:
    """`"mlx"` or `"pytorch"` from the tensor names; raises for quantized or unknown files."""
    names = set(header)
    quantized = sorted(n for n in names if n.endswith(QUANT_SUFFIXES))
    if quantized:
        raise ConvertError(f"the source is already quantized ({quantized[0]}); convert from the bf16 weights "
                           "(e.g. kyutai/moshiko-pytorch-bf16 or a model.safetensors of kyutai/moshiko-mlx-bf16)")
    if "audio_embs.0.weight" in names or any(n.startswith("depformer.slices.") for n in names):
        return MLX
    if "emb.0.weight" in names or any(n.endswith("in_proj_weight") for n in names):
        return PYTORCH
    raise ConvertError(f"unrecognised tensor names (e.g. {sorted(names)[0]!r}): neither Kyutai's PyTorch nor "
                       "MLX Moshi LM layout; pass a Moshi LM checkpoint")


def _torch_source(target: str, config: LmConfig) -> tuple[str, int | None]:
    """The PyTorch tensor name holding `target`, and the per-step chunk index to take from it (or None)."""
    alpha = lambda name: name[:-len(".weight")] + ".alpha"  # noqa: E731
    if target == "out_norm.weight":
        return alpha(target), None
    if target.startswith("audio_embs."):
        return "emb." + target[len("audio_embs."):], None
    if target.startswith("transformer."):
        if is_norm(target):
            return alpha(target), None
        return target.replace(".in_proj.weight", ".in_proj_weight"), None
    found = _SLICE.match(target)
    if found is None:
        return target, None  # text_emb, text_linear: same name in both layouts
    k, rest = int(found.group(1)), found.group(2)
    step = config.depformer_weight_index(k)
    if rest == "linear_in.weight":
        return f"depformer_in.{config.depformer_in_index(k)}.weight", None
    if rest == "linear_out.weight":
        return f"linears.{k}.weight", None
    if rest.startswith("emb."):  # the table, and a low-rank or demultiplexed table's projections
        return ("depformer_text_emb." if k == 0 else f"depformer_emb.{k - 1}.") + rest[len("emb."):], None
    layer = _SLICE_LAYER.match(rest)
    if layer is None:
        raise ConvertError(f"internal: no PyTorch name known for {target}")
    src, tail = f"depformer.layers.{layer.group(1)}", layer.group(2)
    if is_norm(tail):
        return f"{src}.{alpha(tail)}", None
    if tail == "self_attn.in_proj.weight":
        return f"{src}.self_attn.in_proj_weight", step
    if tail == "self_attn.out_proj.weight":
        return f"{src}.self_attn.out_proj.weight", step
    gating = f"gating.{step}" if config.depformer_weights_per_step else "gating"
    return f"{src}.{tail.replace('gating', gating, 1)}", None


def _shape_error(source: TensorInfo, want: tuple[int, ...], config_name: str) -> ConvertError:
    return ConvertError(f"{source.name} is {list(source.shape)} in the file but {config_name} expects "
                        f"{list(want)}: the tensors match no known config; put the model's config.json beside "
                        "the weights or pass --config FILE")


def plan(header: dict[str, TensorInfo], config: LmConfig, config_name: str) -> tuple[str, list[Mapping]]:
    """Maps every tensor of the source onto Kyutai's MLX layout and checks counts and shapes.

    Args:
        header: The source file's tensors (from `read_header`).
        config: The architecture the tensors must fit.
        config_name: How to name the config in errors (e.g. "the moshi_7b preset").

    Returns:
        `(layout, mappings)`, the mappings sorted in source-file order.

    Raises:
        ConvertError: a missing, unexpected, non-float or wrongly shaped tensor, or a quantized source.
    """
    layout = detect_layout(header)
    expected = expected_mlx_shapes(config)
    sets = config.depformer_num_weight_sets
    mappings, used = [], set()
    for target, want in expected.items():
        if layout == MLX:
            name, chunk = target, None
        else:
            name, chunk = _torch_source(target, config)
        source = header.get(name)
        if source is None:
            raise ConvertError(f"missing tensor {name!r} ({len(header)} tensors in the file, {config_name} needs "
                               f"{name!r}): the tensors match no known config; pass the model's config.json "
                               "with --config FILE")
        if source.dtype not in FLOAT_DTYPES:
            raise ConvertError(f"{name} is {source.dtype}; only float weights ({', '.join(FLOAT_DTYPES)}) can "
                               "be converted")
        used.add(name)
        rows = None
        if chunk is not None:
            if not source.shape or source.shape[0] != sets * want[0] or source.shape[1:] != want[1:]:
                raise _shape_error(source, (sets * want[0], *want[1:]), config_name)
            rows = (chunk * want[0], (chunk + 1) * want[0])
        elif is_norm(target) and layout == PYTORCH:
            # PyTorch norms are [1, 1, D]: same bytes, reshaped.
            if math.prod(source.shape) != math.prod(want) or source.shape[-1:] != want[-1:]:
                raise _shape_error(source, (1, 1, *want), config_name)
        elif source.shape != want:
            raise _shape_error(source, want, config_name)
        mappings.append(Mapping(target, want, source, rows))
    unused = sorted(set(header) - used)
    if unused:
        raise ConvertError(f"{len(unused)} tensors of the file match nothing in {config_name} (e.g. {unused[0]!r}): "
                           "the tensors match no known config; pass the model's config.json with --config FILE")
    mappings.sort(key=lambda m: (m.source_order, m.target))
    return layout, mappings


def torch_shapes(config: LmConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of Kyutai's PyTorch layout for this config (the inverse of `plan`).

    Used to build synthetic PyTorch-layout checkpoints (tests, memory measurements) without PyTorch.
    """
    sets = config.depformer_num_weight_sets
    shapes: dict[str, tuple[int, ...]] = {}
    for target, want in expected_mlx_shapes(config).items():
        name, chunk = _torch_source(target, config)
        if chunk is not None:
            shapes[name] = (sets * want[0], *want[1:])
        elif is_norm(target):
            shapes[name] = (1, 1, *want)
        else:
            shapes[name] = want
    return shapes
