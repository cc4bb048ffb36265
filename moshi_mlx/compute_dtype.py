"""Which float dtype the LM computes in when the user leaves it to us (`--dtype auto`).

MLX's CPU backend runs float32 matrix-vector products through BLAS, and bfloat16 ones through its own
slower kernels: on a 2-core x86 machine a 1B-parameter LM step took 515 ms in bf16 and 424 ms in fp32 with
MLX's bundled BLAS, 187 ms with OpenBLAS (`moshi-mlx-bench stt` measures it). So on the CPU, a float
checkpoint is computed in float32, unless the float32 weights would take more than half the machine's
memory. On a GPU (Metal, CUDA) bf16 halves the bytes every step reads: the checkpoint's dtype stays.
Quantized checkpoints keep their packed weights either way.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

FP32_MAX_RAM_SHARE = 0.5
_FLOAT_BYTES = {"BF16": 2, "F16": 2, "F32": 4}


def total_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def float_weights(path: Path) -> tuple[bool, int]:
    """`(quantized, float32 bytes of the float tensors)` from a safetensors header (nothing else is read)."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
    quantized = any(k.endswith(".scales") for k in header)
    elements = 0
    for key, info in header.items():
        if key != "__metadata__" and info.get("dtype") in _FLOAT_BYTES:
            n = 1
            for d in info["shape"]:
                n *= d
            elements += n
    return quantized, 4 * elements


def choose(choice: str | None, lm_file: Path, on_gpu: bool, ram_bytes: int | None = None) -> str | None:
    """`"fp32"`, `"bf16"` or None (keep the file's) for `--dtype choice` (`auto`, `bf16`, `fp32` or None)."""
    if choice in ("bf16", "fp32"):
        return choice
    if choice not in (None, "auto") or on_gpu:
        return None
    try:
        quantized, fp32_bytes = float_weights(lm_file)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None  # the loader reports an unreadable file in its own words
    ram = total_ram_bytes() if ram_bytes is None else ram_bytes
    if quantized or not ram or fp32_bytes > FP32_MAX_RAM_SHARE * ram:
        return None
    return "fp32"
