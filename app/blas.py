"""Which BLAS the benchmarks' CPU work runs on: one choice, applied alike to every side of a comparison.

On Linux the `mlx[cpu]` wheel bundles the reference (netlib) BLAS, tens of times slower at matmuls than
what Accelerate gives MLX on a Mac. `--blas openblas` preloads Debian's OpenBLAS (`apt-get install
libopenblas0-pthread`) into every worker process, ours and Kyutai's, for CPU numbers closer to a Mac's.
Each worker then reports which BLAS library it mapped and a 1024^2 fp32 matmul's speed on the CPU, so a
table never claims a BLAS it did not run on. On macOS nothing is preloaded (MLX uses Accelerate there),
and the product itself never preloads anything.

This module imports nothing from our package: it also runs inside Kyutai's environment.
"""

from __future__ import annotations

import glob
import os
import sys
import time

CHOICES = ("bundled", "openblas")
OPENBLAS_GLOB = "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0"  # Debian's libopenblas0-pthread
INSTALL_HINT = "apt-get install libopenblas0-pthread"
PROBE_SIZE = 1024


def add_argument(parser) -> None:
    """Adds `--blas bundled|openblas` to a benchmark's parser."""
    parser.add_argument("--blas", choices=CHOICES, default="bundled",
                        help="Linux: BLAS for every worker, ours and Kyutai's alike: the mlx wheel's bundled "
                             f"netlib (default) or Debian's OpenBLAS, preloaded ({INSTALL_HINT}); "
                             "no effect on macOS, where MLX uses Accelerate")


def openblas_library() -> str | None:
    """Path of Debian's pthread OpenBLAS, or None when it is not installed."""
    found = sorted(glob.glob(OPENBLAS_GLOB))
    return found[0] if found else None


def setup(choice: str) -> tuple[dict[str, str], str]:
    """The workers' environment for `choice` and the line naming it for the output's header.

    "openblas" puts OpenBLAS first in LD_PRELOAD; "bundled" takes any OpenBLAS out of an inherited
    LD_PRELOAD, so that the two choices never measure the same thing. A missing library is a one-line
    error with the command that installs it.
    """
    env = dict(os.environ)
    if sys.platform == "darwin":
        if choice == "openblas":
            print("note: --blas openblas has no effect on macOS: MLX uses Accelerate there; nothing is preloaded",
                  file=sys.stderr)
        return env, "BLAS: Accelerate (macOS)"
    kept = [lib for lib in env.get("LD_PRELOAD", "").replace(":", " ").split() if "openblas" not in lib]
    header = "BLAS: bundled netlib (the mlx wheel's own)"
    if choice == "openblas":
        lib = openblas_library()
        if lib is None:
            from .cli_common import fail

            fail(f"--blas openblas: OpenBLAS is not installed ({OPENBLAS_GLOB} not found); "
                 f"install it with `{INSTALL_HINT}` (as root)")
        kept.insert(0, lib)
        header = f"BLAS: OpenBLAS (LD_PRELOAD={lib})"
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env, header


def probe() -> dict:
    """In a worker, after its timed work: the BLAS libraries this process mapped (paths), and the GFLOP/s of
    one 1024^2 fp32 matmul on the CPU (where the BLAS runs; on a GPU build too)."""
    import mlx.core as mx

    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "blas" in os.path.basename(path).lower():
                    libs.add(path)
    except OSError:  # macOS has no /proc: Accelerate
        pass
    key = mx.random.key(0)  # never touches the global random state
    a, b = (mx.random.normal((PROBE_SIZE, PROBE_SIZE), key=k, stream=mx.cpu) for k in mx.random.split(key))
    mx.eval(mx.matmul(a[:64, :64], b[:64, :64], stream=mx.cpu))  # first call: BLAS threads start
    start = time.perf_counter()
    mx.eval(mx.matmul(a, b, stream=mx.cpu))
    seconds = time.perf_counter() - start
    return {"libs": sorted(libs), "gflops": 2 * PROBE_SIZE**3 / seconds / 1e9}


def describe(choice: str, result: dict | None) -> str:
    """One worker's probe in a few words; exits with a one-line error when it ran on another BLAS than
    `choice` (a table must not claim a BLAS it did not run on).

    NumPy's wheels map an OpenBLAS of their own (symbols renamed, unusable by MLX): only the preloaded
    library counts.
    """
    if result is None:
        return "no BLAS (candle)"
    if sys.platform == "darwin":
        return f"Accelerate, {result['gflops']:.0f} GFLOP/s"
    preload = openblas_library()
    preloaded = preload is not None and os.path.realpath(preload) in result["libs"]
    if preloaded != (choice == "openblas"):
        raise SystemExit(f"error: --blas {choice} did not take effect in a worker (BLAS libraries mapped: "
                         f"{', '.join(result['libs']) or 'none'}); its numbers above are not on that BLAS")
    ours = [lib for lib in result["libs"] if "mlx" in lib] or result["libs"] or ["unknown"]
    lib = os.path.realpath(preload) if preloaded else ours[0]
    return f"{os.path.basename(lib)}, {result['gflops']:.0f} GFLOP/s"
