"""What the side-by-side benchmarks share on the parent's side: run each side's worker in its own
environment, and the reference-environment flags.

Each benchmark file is also its own worker (`--worker ours|kyutai`), run as a script; Kyutai's side runs in
Kyutai's environment from `/`, so that this checkout's `moshi_mlx` cannot shadow theirs. A worker prints
one JSON row as its last line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

try:
    from . import blas
except ImportError:  # imported by a benchmark run as a script: app/ is on sys.path
    import blas

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REF_PYTHON = REPO / ".ref" / "mlx" / "bin" / "python"
SIDES = ("ours", "kyutai")
RATE = 24_000


def add_reference_args(p, only: bool = True) -> None:
    """`--reference-python` (`--ref-python` hidden), `--only` and the hidden `--worker`."""
    p.add_argument("--reference-python", dest="ref_python", default=str(DEFAULT_REF_PYTHON), metavar="PY",
                   help="interpreter with Kyutai's moshi_mlx (bash tests/reference/build_envs.sh)")
    p.add_alias("--ref-python", dest="ref_python")
    if only:
        p.add_argument("--only", choices=SIDES, default=None, help="run one side only")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)


def run_sides(script: str | Path, ref_python: str, worker_args: list[str], env: dict,
              only: str | None = None) -> dict[str, dict] | None:
    """`{side: row}` from `script --worker SIDE *worker_args` for each side (or `only` one); None, with the
    failing side's stderr printed, when a worker fails."""
    rows = {}
    for side, python in (("ours", sys.executable), ("kyutai", ref_python)):
        if only not in (None, side):
            continue
        cmd = [python, str(Path(script).resolve()), "--worker", side, *worker_args]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd="/" if side == "kyutai" else REPO, env=env)
        if r.returncode != 0:
            print(f"{side} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
            return None
        rows[side] = json.loads(r.stdout.strip().splitlines()[-1])
    return rows


def report(a, blas_header: str, rows: dict[str, dict], **extra) -> None:
    """The closing lines every side-by-side benchmark prints (each worker's BLAS check), and `--json`: the
    BLAS, the checkpoint, `extra` and the rows."""
    print(f"BLAS check ({blas.PROBE_SIZE}^2 fp32 matmul on the CPU, in each worker): "
          + "; ".join(f"{side} {blas.describe(a.blas, r['blas'])}" for side, r in rows.items()))
    if a.json:
        a.json.write_text(json.dumps({"blas": blas_header, "checkpoint": str(a.checkpoint), **extra, "rows": rows},
                                     indent=1))


def test_signal(seconds: float):
    """A voice-like test input (a gliding tone with a syllable rhythm, a little noise), float32 24 kHz."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    f = 150 + 100 * np.sin(2 * np.pi * 0.7 * t)
    x = 0.4 * np.sin(2 * np.pi * np.cumsum(f) / RATE) * (0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t))
    return (x + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
