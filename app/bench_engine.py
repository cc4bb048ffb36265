"""The engine's two frame loops in one run: the serial `Engine.step` loop and the pipelined `Engine.stream`.

    python -m app.bench_engine [--model DIR] [--frames 50] [--realtime] [--blas openblas]

Both run the same frames with the same seed on the same loaded model, in one worker process (so that
`--blas` applies to it), after a warm-up of each. Per loop it prints frames per second, the stream/serial
throughput ratio, the per-frame latency (frame in -> its result out) median and p90, and whether the
stream gave exactly the serial loop's tokens and audio. Frames are fed as fast as each loop takes them;
with `--realtime` they arrive every 80 ms instead, and latency counts from that arrival. Where MLX has a
GPU (Metal or CUDA), both codec devices are run, so that a Mac shows which one wins. Without
`--model`, a random mid-size LM (bf16) and a random published-size Mimi are written once under
`--out` (the offline benchmark's checkpoint).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from . import blas
from .cli_parser import make_parser
from .bench_offline import REPO, make_checkpoint
from .bench_sides import test_signal

FRAME, RATE = 1920, 24000
FRAME_S = FRAME / RATE
WARMUP_FRAMES = 8


def _feed(frames: list, arrivals: list[float], realtime: bool):
    """Yields `frames`, recording when each arrives: now, or its 80 ms slot with `realtime`."""
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        if realtime:
            time.sleep(max(0.0, start + i * FRAME_S - time.perf_counter()))
            arrivals.append(start + i * FRAME_S)
        else:
            arrivals.append(time.perf_counter())
        yield frame


def _loop(engine, frames: list, realtime: bool, pipelined: bool) -> tuple[list, dict]:
    """Runs one loop from a fresh conversation; returns its results and timings."""
    engine.reset()
    arrivals, outs, results = [], [], []
    source = _feed(frames, arrivals, realtime)
    for r in (engine.stream(source) if pipelined else (engine.step(f) for f in source)):
        outs.append(time.perf_counter())
        results.append(r)
    latency = sorted(1e3 * (o - a) for o, a in zip(outs, arrivals))
    return results, {"fps": len(frames) / (outs[-1] - arrivals[0]), "latency_med_ms": latency[len(latency) // 2],
                     "latency_p90_ms": latency[min(len(latency) - 1, int(0.9 * len(latency)))]}


def _same(a: list, b: list) -> tuple[bool, bool, float]:
    """(tokens identical, audio identical, largest audio difference) of two loops' results."""
    import numpy as np

    tokens = all(x.text_token == y.text_token and (x.moshi_codes is None) == (y.moshi_codes is None)
                 and (x.moshi_codes is None or np.array_equal(x.moshi_codes, y.moshi_codes)) for x, y in zip(a, b))
    diff = max(float(np.abs(x.pcm - y.pcm).max()) for x, y in zip(a, b))
    return tokens and len(a) == len(b), diff == 0.0 and len(a) == len(b), diff


def worker(folder: Path, frames: int, realtime: bool, codec_devices: list[str] | None) -> dict:
    import mlx.core as mx
    import numpy as np

    from moshi_mlx.engine import SamplingParams
    from moshi_mlx.loading import load

    model = load(folder)
    pcm = test_signal(frames * FRAME_S)
    clip = [pcm[i * FRAME:(i + 1) * FRAME] for i in range(frames)]
    gpu = mx.is_available(mx.gpu)  # Metal or CUDA
    rows = []
    for device in codec_devices or (["gpu", "cpu"] if gpu else ["cpu"]):
        engine = model.engine(SamplingParams(seed=0), codec_device=device)
        engine.warmup()
        list(engine.stream(iter([np.zeros(FRAME, np.float32)] * WARMUP_FRAMES)))  # the stage threads' warm-up
        serial, serial_t = _loop(engine, clip, realtime, pipelined=False)
        stream, stream_t = _loop(engine, clip, realtime, pipelined=True)
        tokens, audio, diff = _same(serial, stream)
        rows.append({"codec": device, "serial": serial_t, "stream": stream_t, "tokens_identical": tokens,
                     "audio_identical": audio, "audio_max_diff": diff})
    return {"rows": rows, "lm_device": mx.default_device().type.name, "mlx": mx.__version__,
            "lm": model.files.lm.name, "blas": blas.probe()}


def main(argv: list[str] | None = None) -> int:
    p = make_parser("moshi-mlx-bench engine", __doc__.splitlines()[0])
    p.add_argument("--model", dest="checkpoint", type=Path, metavar="DIR",
                   help="folder: LM file, config.json, Mimi file (default: a random mid-size bf16 LM and a random "
                        "published-size Mimi, written once under --out)")
    p.add_alias("--checkpoint", dest="checkpoint", type=Path)
    p.add_argument("--out", type=Path, default=REPO / "bench-out", metavar="DIR", help="DIR: where the random checkpoints the benchmark generates are written once and reused")
    p.add_argument("--frames", type=int, default=50, help="timed frames per loop (80 ms each)")
    p.add_argument("--realtime", action="store_true", help="frames arrive every 80 ms (default: as fast as taken)")
    p.add_argument("--codec-devices", help="comma-separated, e.g. cpu,gpu (default: gpu,cpu where MLX has a GPU)")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    blas.add_argument(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.frames < 2:
        p.error("--frames must be at least 2")
    devices = a.codec_devices.split(",") if a.codec_devices else None
    if devices and set(devices) - {"auto", "cpu", "gpu"}:
        p.error("--codec-devices: each is auto, cpu or gpu")
    if a.worker:
        try:
            print(json.dumps(worker(a.checkpoint, a.frames, a.realtime, devices)))
        except ValueError as e:  # e.g. a GPU codec on a machine without one
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    env, blas_header = blas.setup(a.blas)
    folder = (a.checkpoint or make_checkpoint(a.out, "bf16")).resolve()
    # This module's own name: app.bench_engine in the checkout, moshi_mlx.app.bench_engine installed.
    cmd = [sys.executable, "-m", f"{__package__}.bench_engine", "--worker", "--model", str(folder),
           "--frames", str(a.frames)] + (["--realtime"] if a.realtime else []) + \
        (["--codec-devices", a.codec_devices] if a.codec_devices else [])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        print(f"error: the engine worker failed with exit status {proc.returncode} (its error is above)",
              file=sys.stderr)
        return 1
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"Engine: serial step loop vs pipelined stream; {folder.name}/{r['lm']} and its Mimi, "
          f"{a.frames} frames {'arriving every 80 ms' if a.realtime else 'fed as fast as taken'}; "
          f"mlx {r['mlx']}, LM on {r['lm_device']}; {blas_header}")
    print(f"{'codec':5} {'loop':6} {'frames/s':>8} {'ratio':>6} {'lat med':>8} {'lat p90':>8}  same as serial "
          "(ms: frame in -> its result out)")
    for row in r["rows"]:
        s, t = row["serial"], row["stream"]
        same = (f"tokens {'yes' if row['tokens_identical'] else 'NO'}, audio "
                + ("yes" if row["audio_identical"] else f"NO (max diff {row['audio_max_diff']:.2e})"))
        print(f"{row['codec']:5} {'serial':6} {s['fps']:8.2f} {'':>6} {s['latency_med_ms']:8.1f} "
              f"{s['latency_p90_ms']:8.1f}")
        print(f"{row['codec']:5} {'stream':6} {t['fps']:8.2f} {t['fps'] / s['fps']:6.2f} {t['latency_med_ms']:8.1f} "
              f"{t['latency_p90_ms']:8.1f}  {same}")
    print(f"BLAS check ({blas.PROBE_SIZE}^2 fp32 matmul on the CPU, in the worker): "
          f"{blas.describe(a.blas, r['blas'])}")
    if a.json:
        a.json.write_text(json.dumps({"blas": blas_header, "checkpoint": str(folder), **r}, indent=1))
    return 0 if all(row["tokens_identical"] and row["audio_identical"] for row in r["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
