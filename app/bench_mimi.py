"""Benchmark Mimi streaming: our MLX Mimi, and optionally Kyutai's moshi_mlx Mimi and rustymimi, same weights.

    python -m app.bench_mimi                                   # ours only
    python -m app.bench_mimi --reference-python .ref/mlx/bin/python --minutes 1

Each implementation runs in its own fresh process (so peak RSS is its own) on the same published-size
checkpoint with random weights, written once in the published PyTorch layout that all three load. Per 80 ms
frame it times `encode_step` and `decode_step` (each followed by evaluation), and reads the process's peak RSS
after warm-up and after streaming `--minutes` of audio. The reference implementations run in the reference
interpreter, which must have `moshi_mlx` (Kyutai's) and `rustymimi` installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from . import blas
    from .cli_parser import make_parser
    from .memory import peak_rss_mb
except ImportError:  # run as a script (the workers, Kyutai's side too): no parent package; app/ is on sys.path
    import blas
    from cli_parser import make_parser
    from memory import peak_rss_mb

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 24_000  # duplicated from moshi_mlx.constants: worker processes must not import our package
FRAME_SIZE = 1920
FRAMES_PER_MINUTE = 60 * SAMPLE_RATE // FRAME_SIZE
WARMUP_FRAMES = 5
IMPLEMENTATIONS = ("ours", "moshi_mlx", "rustymimi")


# ------------------------------------------------------------------------------------------ checkpoint


def write_random_checkpoint(path: Path, seed: int) -> None:
    """Published-size Mimi with random weights (unit-scale activations), in Kyutai's PyTorch layout."""
    from moshi_mlx.demo import write_random_mimi

    write_random_mimi(path, None, seed)


# ------------------------------------------------------------------------------------------ workers


def _make_codec(impl: str, weights: str, num_codebooks: int):
    """Return (encode_step(np_pcm) -> codes, decode_step(codes) -> pcm), each fully evaluated."""
    if impl == "rustymimi":
        import rustymimi

        tok = rustymimi.Tokenizer(weights, num_codebooks=num_codebooks)
        return tok.encode_step, lambda codes: tok.decode_step(codes.astype(np.uint32))
    import mlx.core as mx

    if impl == "ours":
        sys.path.insert(0, str(REPO))  # ahead of an installed Kyutai `moshi_mlx` in the reference interpreter
        from moshi_mlx.mimi import load_mimi

        mimi = load_mimi(weights, num_codebooks=num_codebooks)
        enc, dec = mimi.make_encode_state(1), mimi.make_decode_state(1)
        encode = lambda pcm: mimi.encode_step(mx.array(pcm), enc)  # noqa: E731
        decode = lambda codes: mimi.decode_step(codes, dec)  # noqa: E731
    else:
        from moshi_mlx import models  # Kyutai's package, in the reference interpreter

        # It loads the 32-codebook file strictly only into a 32-codebook model; then keep the first K, as
        # RVQ is sequential, so it quantizes with exactly the work of a K-codebook model.
        mimi = models.mimi.Mimi(models.mimi_202407(32))
        mimi.load_pytorch_weights(weights, strict=True)
        mimi.quantizer._nq = num_codebooks
        mimi.quantizer.rvq_rest.vq.layers = mimi.quantizer.rvq_rest.vq.layers[:num_codebooks - 1]
        encode = lambda pcm: mimi.encode_step(mx.array(pcm))  # noqa: E731
        decode = mimi.decode_step

    def encode_eval(pcm):
        codes = encode(pcm)
        mx.eval(codes)
        return codes

    def decode_eval(codes):
        out = decode(codes)
        mx.eval(out)
        return out

    return encode_eval, decode_eval


def worker(impl: str, weights: str, num_codebooks: int, frames: int, seed: int) -> dict:
    """Stream `frames` frames through encode_step and decode_step; time each step, read peak RSS."""
    encode, decode = _make_codec(impl, weights, num_codebooks)
    rng = np.random.default_rng(seed)
    t = np.arange(FRAME_SIZE * 16) / SAMPLE_RATE
    clip = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    enc_ms, dec_ms = [], []
    rss_warm = None
    rss_by_minute = []  # peak RSS after each whole minute of streamed audio: growth shows here
    for i in range(frames):
        start = (i % 16) * FRAME_SIZE
        pcm = clip[None, None, start:start + FRAME_SIZE]
        t0 = time.perf_counter()
        codes = encode(pcm)
        t1 = time.perf_counter()
        decode(codes)
        t2 = time.perf_counter()
        if i >= WARMUP_FRAMES:
            enc_ms.append(1e3 * (t1 - t0))
            dec_ms.append(1e3 * (t2 - t1))
        elif i == WARMUP_FRAMES - 1:
            rss_warm = peak_rss_mb()
        if (i + 1) % FRAMES_PER_MINUTE == 0:
            rss_by_minute.append(round(peak_rss_mb()))
            print(f"  {impl}: {len(rss_by_minute)} min streamed, peak RSS {rss_by_minute[-1]} MB, "
                  f"median enc+dec {np.median(enc_ms) + np.median(dec_ms):.0f} ms", file=sys.stderr, flush=True)
    ops = None
    if impl == "rustymimi":
        backend = "candle, CPU"
    else:
        import mlx.core as mx

        backend = f"mlx {mx.__version__}, {mx.default_device()}"
        pcm = clip[None, None, :FRAME_SIZE]
        ops = _graph_op_counter()(lambda _: decode(encode(pcm)))
    return {
        "impl": impl, "frames": frames, "backend": backend,
        "encode_ms": [float(np.median(enc_ms)), float(np.percentile(enc_ms, 90))],
        "decode_ms": [float(np.median(dec_ms)), float(np.percentile(dec_ms, 90))],
        "rss_warm_mb": rss_warm, "rss_end_mb": peak_rss_mb(), "rss_by_minute_mb": rss_by_minute,
        "graph_ops": ops,
    }


def _graph_op_counter():
    """The LM benchmark's counter of primitives evaluated per step (the same rule for every side)."""
    try:
        from .bench_lm import _count_graph_ops
    except ImportError:  # a worker runs this file as a script, its folder on sys.path; bench_lm imports
        from bench_lm import _count_graph_ops  # nothing of ours at load, so `moshi_mlx` stays Kyutai's there
    return _count_graph_ops


# ------------------------------------------------------------------------------------------ driver


def run_worker(python: str, impl: str, args, weights: Path, env: dict | None = None) -> dict | None:
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, "--model", str(weights),
           "--num-codebooks", str(args.num_codebooks), "--frames", str(args.total_frames),
           "--seed", str(args.seed)]
    # Run from outside the repo so that, in the reference interpreter, `moshi_mlx` is Kyutai's package.
    # stderr passes through: long runs report each streamed minute as they go.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(), env=env)
    if proc.returncode != 0:
        print(f"  {impl}: failed with exit status {proc.returncode} (its error is above)", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _total(result: dict) -> float:
    return result["encode_ms"][0] + result["decode_ms"][0]


def main(argv: list[str] | None = None) -> int:
    p = make_parser("moshi-mlx-bench mimi", __doc__.splitlines()[0])
    p.add_argument("--reference-python", metavar="PY",
                   help="interpreter with Kyutai's moshi_mlx and rustymimi installed (default: ours only)")
    p.add_alias("--ref-python", dest="reference_python")
    p.add_argument("--model", dest="weights", type=Path, metavar="FILE",
                   help="published-size Mimi .safetensors (default: random, written to a temporary folder)")
    p.add_alias("--weights", dest="weights", type=Path)
    p.add_argument("--frames", type=int, default=40, help="timed frames (after %d warm-up frames)" % WARMUP_FRAMES)
    p.add_argument("--minutes", type=float, default=0.0, help="stream at least this much audio for peak RSS")
    p.add_argument("--num-codebooks", type=int, default=8, help="codebooks encoded and decoded")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per implementation, round-robin; the fastest is reported (for noisy machines)")
    p.add_argument("--seed", type=int, default=0, help="of the random weights and input")
    p.add_argument("--only", nargs="+", metavar="LABEL",
                   help="run only these rows (ours, ours@ref, moshi_mlx, rustymimi), e.g. to spread long runs")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    blas.add_argument(p)
    p.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.frames < 1 or args.minutes < 0 or args.repeat < 1:
        p.error("--frames and --repeat must be positive and --minutes non-negative")
    if args.worker:
        result = worker(args.worker, str(args.weights), args.num_codebooks, args.frames, args.seed)
        result["blas"] = None if args.worker == "rustymimi" else blas.probe()
        print(json.dumps(result))
        return 0
    if args.reference_python:  # workers run from another folder; keep the venv's symlink (no resolve)
        args.reference_python = os.path.abspath(args.reference_python)
    env, blas_header = blas.setup(args.blas)
    args.total_frames = WARMUP_FRAMES + max(args.frames, round(args.minutes * FRAMES_PER_MINUTE))

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            weights = Path(tmp) / "mimi-random.safetensors"
            print(f"writing a random published-size Mimi to {weights} ...", file=sys.stderr)
            write_random_checkpoint(weights, args.seed)
        elif not weights.is_file():
            p.error(f"{weights}: no such file")
        weights = weights.absolute()
        runs = [("ours", "ours", sys.executable)]
        if args.reference_python:
            # Ours again under the reference interpreter's MLX, so one row compares like with like.
            runs += [("ours@ref", "ours", args.reference_python), ("moshi_mlx", "moshi_mlx", args.reference_python),
                     ("rustymimi", "rustymimi", args.reference_python)]
        if args.only:
            unknown = set(args.only) - {label for label, _, _ in runs}
            if unknown:
                p.error(f"--only: no such row {sorted(unknown)} (rows: {[label for label, _, _ in runs]})")
            runs = [run for run in runs if run[0] in args.only]
        best: dict[str, dict] = {}
        for round_ in range(args.repeat):
            for label, impl, python in runs:
                print(f"running {label} ({args.total_frames} frames, round {round_ + 1}) ...", file=sys.stderr)
                r = run_worker(python, impl, args, weights, env)
                if r and (label not in best or _total(r) < _total(best[label])):
                    best[label] = {**r, "impl": label}
        results = [best[label] for label, _, _ in runs if label in best]

    audio_s = args.total_frames * FRAME_SIZE / SAMPLE_RATE
    print(f"Mimi streaming, published size, random weights, {args.num_codebooks} codebooks; "
          f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs; {audio_s:.1f} s streamed per run; "
          f"best of {args.repeat} run(s); {blas_header}")
    print(f"{'impl':<10} {'enc med':>8} {'enc p90':>8} {'dec med':>8} {'dec p90':>8} {'ratio':>6} "
          f"{'RSS warm':>9} {'RSS end':>8} {'ops':>6}   (ms per 80 ms frame; ratio = our enc+dec / theirs; MB;\n"
          f"{'':<10} ops = graph primitives evaluated per frame, encode + decode, a proxy for GPU kernel launches)")
    ours = next((r for r in results if r["impl"] == "ours"), None)
    for r in results:
        ratio = _total(ours) / _total(r) if ours else float("nan")
        print(f"{r['impl']:<10} {r['encode_ms'][0]:8.2f} {r['encode_ms'][1]:8.2f} {r['decode_ms'][0]:8.2f} "
              f"{r['decode_ms'][1]:8.2f} {ratio:6.2f} {r['rss_warm_mb']:9.0f} {r['rss_end_mb']:8.0f} "
              f"{'n/a' if r['graph_ops'] is None else format(r['graph_ops'], '.0f'):>6}   {r['backend']}")
    print(f"BLAS check ({blas.PROBE_SIZE}^2 fp32 matmul on the CPU, in each worker): "
          + "; ".join(f"{r['impl']} {blas.describe(args.blas, r['blas'])}" for r in results))
    if args.json:
        args.json.write_text(json.dumps({"blas": blas_header, "rows": results}, indent=1))
    if any(r["rss_by_minute_mb"] for r in results):
        print("peak RSS (MB) after each streamed minute:")
        for r in results:
            print(f"  {r['impl']:<10} {' '.join(str(v) for v in r['rss_by_minute_mb'])}")
    return 0 if len(results) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
