"""Measures conversion wall time and peak memory on a 7B-shaped random PyTorch-layout checkpoint.

    python -m convert.measure [--dir bench-out/convert-7b] [--quantize q4 bf16] [--keep]

Builds `DIR/src/model.safetensors` once (random bf16 weights in the exact shapes and names of
`kyutai/moshiko-pytorch-bf16`, ~15.4 GB, written by the streaming writer), then runs each conversion in a
fresh Python process and reports its wall time and peak resident memory (the child's own `ru_maxrss`).
Outputs are deleted after measuring unless --keep. Needs ~15.4 GB free for the source plus the largest
output (~15.4 GB for bf16, ~4.8 GB for q4).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from moshi_mlx.lm.config import LmConfig

from .pytorch_to_mlx import torch_shapes
from .safetensors_stream import OutputSpec, SequentialWriter

DEFAULT_DIR = Path("bench-out") / "convert-7b"
GB = 1e9
# ru_maxrss is in kilobytes on Linux and in bytes on macOS.
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024

# Random bf16 bit patterns with a fixed exponent: magnitudes in [2^-7, 2^-6), random sign and mantissa.
# Cheap to draw (no float math), finite, and in the range of real weights, so quantization does real work.
_BF16_SIGN_MANTISSA = 0x807F
_BF16_EXPONENT = 0x3C00

# What the child process runs: the console entry point, then its own peak RSS in bytes on stdout as JSON.
# It imports this package by its own name: `convert` in the checkout, `moshi_mlx.convert` installed.
_CHILD = f"""
import json, sys
from {__package__}.__main__ import main
from {__package__}.measure import peak_rss_bytes
try:
    main(sys.argv[1:])
finally:
    print(json.dumps({{"peak_rss_bytes": peak_rss_bytes()}}))
"""


def peak_rss_bytes() -> int:
    """Peak resident memory of this process, in bytes.

    On Linux this is `VmHWM` of /proc/self/status: `ru_maxrss` survives exec there, so a child started by a
    big parent would report the parent's peak. Elsewhere (macOS) `ru_maxrss`, which exec resets.
    """
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT


def write_random_checkpoint(path: Path, config: LmConfig, seed: int = 0) -> int:
    """Writes random bf16 weights in Kyutai's PyTorch layout for `config`, one tensor at a time.

    Returns:
        The file size in bytes.
    """
    shapes = torch_shapes(config)
    specs = [OutputSpec(name, "BF16", shape) for name, shape in sorted(shapes.items())]
    rng = np.random.default_rng(seed)
    writer = SequentialWriter(path, specs)
    try:
        for spec in specs:
            bits = rng.integers(0, 1 << 16, size=math.prod(spec.shape), dtype=np.uint16)
            writer.write(spec.name, (bits & _BF16_SIGN_MANTISSA) | _BF16_EXPONENT)
        writer.close()
    except BaseException:
        writer.abort()
        path.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def run_measured(args: list[str]) -> dict:
    """Runs `moshi-mlx-convert ARGS` in a fresh interpreter; returns rc, wall seconds, peak RSS and stderr."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True)
    wall = time.monotonic() - start
    lines = proc.stdout.strip().splitlines()
    peak = json.loads(lines[-1])["peak_rss_bytes"] if lines else 0
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "peak_rss_bytes": peak, "stderr": proc.stderr.strip()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"work folder (default: {DEFAULT_DIR})")
    p.add_argument("--formats", nargs="+", default=["q4", "bf16"], choices=["q4", "q8", "bf16"])
    p.add_argument("--preset", default="moshi_7b")
    p.add_argument("--keep", action="store_true", help="keep the converted folders")
    args = p.parse_args(argv)

    config = LmConfig.preset(args.preset)
    src = args.dir / "src"
    weights = src / "model.safetensors"
    if not weights.is_file():
        src.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        size = write_random_checkpoint(weights, config)
        print(f"built {weights}: {size / GB:.2f} GB in {time.monotonic() - start:.0f} s, "
              f"writer peak RSS {peak_rss_bytes() / GB:.2f} GB", file=sys.stderr)
    results = {}
    for fmt in args.formats:
        out = args.dir / f"out-{fmt}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [str(src), "--out", str(out)] + ([] if fmt == "bf16" else ["--quantize", fmt])
        r = run_measured(cmd)
        r["output_bytes"] = sum(f.stat().st_size for f in out.iterdir()) if out.is_dir() else 0
        results[fmt] = r
        print(f"{fmt}: rc {r['rc']}, wall {r['wall_s']} s, peak RSS {r['peak_rss_bytes'] / GB:.2f} GB, "
              f"output {r['output_bytes'] / GB:.2f} GB", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
