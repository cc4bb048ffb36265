"""Per-tensor dtype casting and affine quantization, as Kyutai quantized its published MLX checkpoints.

Kyutai's `kyutai/moshiko-mlx-q4|q8` are `nn.quantize(model, bits, group_size)` of the bf16 model: every
Linear and every Embedding (in this layout exactly the 2-D tensors; norm weights are 1-D and stay float).
`mx.quantize` on one weight gives the same packed weight, scales and biases as `nn.quantize` on the module
holding it, so quantizing tensor by tensor writes the same file as quantizing the whole model in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from . import ConvertError
from .pytorch_to_mlx import Mapping, is_norm
from .safetensors_stream import OutputSpec

OUTPUT_DTYPES = {"bf16": mx.bfloat16, "fp32": mx.float32}
"""`--dtype` choices: the float dtype of the written weights (and of quantization scales and biases)."""

QUANT_BITS = {"q4": 4, "q8": 8}
DEFAULT_GROUP_SIZE = {"q4": 32, "q8": 64}
"""Kyutai's published choices: q4 with groups of 32, q8 with groups of 64."""

SUPPORTED_GROUP_SIZES = (32, 64, 128)
"""Group sizes that MLX's quantized kernels accept."""

PACK_BITS = 32
"""Quantized values are packed into uint32 words."""

_SAFETENSORS_NAME = {mx.bfloat16: "BF16", mx.float16: "F16", mx.float32: "F32", mx.uint32: "U32"}
# How each float source dtype's raw bytes are viewed in NumPy (which has no bfloat16: its bits go as uint16).
_NUMPY_STORAGE = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


@dataclass(frozen=True)
class Quantization:
    """Affine quantization settings, as recorded in config.json."""

    bits: int
    group_size: int

    def to_dict(self) -> dict[str, int]:
        return {"bits": self.bits, "group_size": self.group_size}


def quantizes(mapping: Mapping) -> bool:
    """True for the tensors Kyutai quantizes: Linear and Embedding weights (2-D, not norms).

    The STT models' extra heads (6 rows each) stay float: quantizing saves nothing worth having, and
    their end-of-turn probability is compared against a threshold. So do the conditioners (TTS), small
    and kept in float32 by Kyutai.
    """
    return (len(mapping.shape) == 2 and not is_norm(mapping.target)
            and not mapping.target.startswith(("extra_heads.", "condition_provider.")))


def check_group_size(mappings: list[Mapping], quant: Quantization) -> None:
    """Raises a one-line error naming the first layer whose input width the group size does not divide."""
    for m in mappings:
        if quantizes(m) and m.shape[-1] % quant.group_size:
            layer = m.target[:-len(".weight")]
            raise ConvertError(f"--group-size {quant.group_size} does not divide the input width "
                               f"{m.shape[-1]} of layer {layer}; pick one of "
                               f"{', '.join(str(g) for g in SUPPORTED_GROUP_SIZES)} that does")


def stored_dtype(mapping: Mapping, dtype: mx.Dtype) -> mx.Dtype:
    """The float dtype a tensor is written in: `dtype`, except the conditioners, which stay float32 (Kyutai
    keeps them so, and the TTS's output changes if they are rounded to bf16)."""
    return mx.float32 if mapping.target.startswith("condition_provider.") else dtype


def output_specs(mapping: Mapping, dtype: mx.Dtype, quant: Quantization | None) -> list[OutputSpec]:
    """The tensors written for one mapping: the weight, plus its scales and biases when quantized."""
    dtype = stored_dtype(mapping, dtype)
    float_name = _SAFETENSORS_NAME[dtype]
    if quant is None or not quantizes(mapping):
        return [OutputSpec(mapping.target, float_name, mapping.shape)]
    rows, width = mapping.shape
    base = mapping.target[:-len(".weight")]
    groups = (rows, width // quant.group_size)
    return [OutputSpec(mapping.target, _SAFETENSORS_NAME[mx.uint32], (rows, width * quant.bits // PACK_BITS)),
            OutputSpec(f"{base}.scales", float_name, groups),
            OutputSpec(f"{base}.biases", float_name, groups)]


def convert_tensor(raw: np.ndarray, mapping: Mapping, dtype: mx.Dtype,
                   quant: Quantization | None) -> list[np.ndarray]:
    """Turns one source tensor's raw bytes into the raw bytes of its output tensors (`output_specs` order).

    Args:
        raw: The source bytes (uint8), already restricted to the mapping's rows.
        mapping: Which tensor this is.
        dtype: Output float dtype.
        quant: Quantization, or None to keep floats.
    """
    source_dtype = mapping.source.dtype
    dtype = stored_dtype(mapping, dtype)
    quantized = quant is not None and quantizes(mapping)
    if not quantized and _SAFETENSORS_NAME[dtype] == source_dtype:
        return [raw]  # same dtype: the bytes are the tensor, whatever the shape says
    values = mx.array(raw.view(_NUMPY_STORAGE[source_dtype]).reshape(mapping.shape))
    if source_dtype == "BF16":
        values = values.view(mx.bfloat16)
    values = values.astype(dtype)
    if not quantized:
        return [_to_bytes(values)]
    packed, scales, biases = mx.quantize(values, group_size=quant.group_size, bits=quant.bits)
    del values
    return [_to_bytes(packed), _to_bytes(scales), _to_bytes(biases)]


def _to_bytes(array: mx.array) -> np.ndarray:
    """Evaluates `array` into a NumPy array holding its bytes (bfloat16 as its uint16 bits)."""
    if array.dtype == mx.bfloat16:
        array = array.view(mx.uint16)
    return np.array(array)
