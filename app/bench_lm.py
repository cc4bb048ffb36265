"""Benchmark of one full LM step (temporal transformer + every depformer codebook, greedy): ours vs moshi_mlx.

Kyutai's moshi_mlx runs in a subprocess with the reference interpreter (`--reference-python`, default
`.ref/mlx/bin/python`), on the same checkpoint file and precision. Random checkpoints in Kyutai's MLX
layout (bf16, q8 = 8 bits group 64, q4 = 4 bits group 32, every Linear and Embedding) are written once to
`--out` (default `bench-out/`, git-ignored).

    python -m app.bench_lm --configs tiny,mid --precisions bf16,q8,q4 --steps 100

Per run it prints median and p90 ms/step, our/their ratio, peak RSS of the worker process, host syncs per
step (calls that wait for the device: `mx.eval`, `.item()`, `.tolist()`, `bool()`, `np.array`/`np.asarray`
of an mx array, counted by wrapping them during the timed steps), the primitives evaluated per step
(both sides counted the same way, from `mx.export_to_dot` at each of those calls: a proxy for kernel
launches on a GPU). Ours runs twice: on our MLX and, as `ours@ref`, on the reference interpreter's MLX,
the version moshi_mlx runs on, so that one row compares like with like. Each side runs `--rounds`
times, alternating, and the round with the best median is kept; the median CPU time per step (all
threads of the worker) is printed too, as it depends less on the machine's other load than wall time.
`--blas openblas` runs every worker on Debian's OpenBLAS (app/blas.py); `--bandwidth GB/s` adds the share of
that memory bandwidth the step reaches, reading each weight once (embedding tables excluded: a step reads
one row of each).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

try:
    from . import blas
    from .cli_parser import make_parser
except ImportError:  # run as a script (the workers, Kyutai's side too): no parent package; app/ is on sys.path
    import blas
    from cli_parser import make_parser

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REF_PYTHON = REPO / ".ref" / "mlx" / "bin" / "python"
PRECISIONS = {"bf16": ("model.safetensors", None), "q8": ("model.q8.safetensors", (8, 64)),
              "q4": ("model.q4.safetensors", (4, 32))}
_SEVEN_B_DELAYS = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
_COMMON = {"n_q": 16, "dep_q": 8, "hidden_scale": 4.125, "max_period": 10000, "delays": _SEVEN_B_DELAYS,
           "causal": True, "layer_scale": None, "gating": "silu", "norm": "rms_norm_f32",
           "positional_embedding": "rope", "depformer_multi_linear": True, "depformer_weights_per_step": True,
           "depformer_pos_emb": "none", "depformer_context": 8, "depformer_max_period": 10000,
           "existing_text_padding_id": 3}
CONFIGS = {
    # Every input width is a multiple of 64 so that q8 (group 64) applies to every layer; moshi_mlx reads
    # the temporal feed-forward as 4.125 * dim whatever hidden_scale says, hence dim 256 (hidden 704).
    "tiny": dict(_COMMON, dim=256, text_card=100, card=32, num_heads=4, num_layers=2, context=3000,
                 depformer_dim=64, depformer_dim_feedforward=288, depformer_num_heads=4,
                 depformer_num_layers=2),
    # 1024-wide temporal transformer, 7B-shaped depformer with fewer layers, real vocabularies.
    "mid": dict(_COMMON, dim=1024, text_card=32000, card=2048, num_heads=16, num_layers=8, context=3000,
                depformer_dim=1024, depformer_dim_feedforward=4224, depformer_num_heads=16,
                depformer_num_layers=2),
}


def _make_checkpoints(name: str, folder: Path) -> None:
    """Writes config.json and random bf16/q8/q4 checkpoints in Kyutai's MLX layout (once)."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlx.utils import tree_flatten

    from moshi_mlx.lm import Lm, LmConfig
    from moshi_mlx.lm.weights import to_kyutai_mlx

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIGS[name], indent=1))
    cfg = LmConfig.from_dict(CONFIGS[name])
    for precision, (file, quant) in PRECISIONS.items():
        if (folder / file).exists():
            continue
        mx.random.seed(0)
        model = Lm(cfg)
        model.set_dtype(mx.bfloat16)  # norms too, like Kyutai's published files
        if quant is not None:
            nn.quantize(model, bits=quant[0], group_size=quant[1])
        weights = to_kyutai_mlx(dict(tree_flatten(model.parameters())), cfg)
        mx.save_safetensors(str(folder / file), weights)
        print(f"wrote {folder / file}", flush=True)


@contextmanager
def hooked_syncs(before):
    """Within the block, `before(args)` runs ahead of every call that waits for the device: `mx.eval`,
    `.item()`, `.tolist()` and `bool()` of an mx array, `np.array`/`np.asarray` of an mx array. Restored
    afterwards."""
    import mlx.core as mx
    import numpy as np

    # (owner, attribute, hooked only when the first argument is an mx array)
    points = [(mx, "eval", False), (mx.array, "item", False), (mx.array, "tolist", False),
              (mx.array, "__bool__", False), (np, "array", True), (np, "asarray", True)]
    originals = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in points]

    def hooked(orig, only_mx_arg):
        def wrapper(*args, **kwargs):
            if not only_mx_arg or (args and isinstance(args[0], mx.array)):
                before(args)
            return orig(*args, **kwargs)
        return wrapper

    try:
        for (owner, attr, only_mx_arg), (_, _, orig) in zip(points, originals):
            setattr(owner, attr, hooked(orig, only_mx_arg))
        yield
    finally:
        for owner, attr, orig in originals:
            setattr(owner, attr, orig)


@contextmanager
def counting_syncs():
    """Counts host syncs (see `hooked_syncs`) within the block: yields a dict whose "n" is the count."""
    count = {"n": 0}

    def before(args):
        count["n"] += 1

    with hooked_syncs(before):
        yield count


def _user_codes(steps: int, card: int, seed: int = 1):
    import numpy as np

    return np.random.default_rng(seed).integers(0, card, size=(steps, 8)).astype(np.int32)


def worker_ours(file: str, config: str, steps: int, warmup: int) -> dict:
    sys.path.insert(0, str(REPO))
    from moshi_mlx.lm import Generator, load_lm

    model = load_lm(file, config=config)
    gen = Generator(model, text_temp=0, audio_temp=0, seed=0)
    codes = _user_codes(steps + warmup, model.config.card)
    for t in range(warmup):
        gen.step(codes[t][None])
    times = []
    with counting_syncs() as syncs:
        for t in range(warmup, warmup + steps):
            start, cpu = time.perf_counter(), time.process_time()
            gen.step(codes[t][None])
            times.append((time.perf_counter() - start, time.process_time() - cpu))
    extra = _user_codes(2, model.config.card, seed=2)
    ops = _count_graph_ops(lambda i: gen.step(extra[i][None]))
    return {"times": times, "syncs": syncs["n"] / steps, "graph_ops": ops}


def _count_graph_ops(step, steps: int = 1) -> float:
    """Primitives evaluated per step, the same way for both sides: at every call that waits for the device
    (see `hooked_syncs`), the lazy graph behind its arguments is exported with `mx.export_to_dot` and its
    primitives counted. Evaluated arrays have no graph left, so each primitive is counted at the sync that
    runs it. `mx.async_eval` becomes a no-op while counting (it only starts work early), so nothing is in
    flight between syncs; one extra step first drains what earlier steps queued."""
    import tempfile

    import mlx.core as mx

    count = {"ops": 0, "on": False}

    def arrays(obj):
        if isinstance(obj, mx.array):
            yield obj
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                yield from arrays(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                yield from arrays(item)

    def before(args):
        lazy = list(arrays(args)) if count["on"] else []
        if lazy:
            with tempfile.NamedTemporaryFile("r", suffix=".dot") as f:
                mx.export_to_dot(f.name, *lazy)
                count["ops"] += f.read().count("shape=rectangle")

    async_eval = mx.async_eval
    try:
        mx.async_eval = lambda *args, **kwargs: None
        with hooked_syncs(before):
            step(0)  # drains the work queued before counting
            count["on"] = True
            for i in range(steps):
                step(1 + i)
    finally:
        mx.async_eval = async_eval
    return count["ops"] / steps


def worker_theirs(file: str, config: str, steps: int, warmup: int, quant: list | None) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from moshi_mlx import models, utils

    cfg = models.LmConfig.from_config_dict(json.loads(Path(config).read_text()))
    model = models.Lm(cfg)
    model.set_dtype(mx.bfloat16)
    if quant is not None:
        nn.quantize(model, bits=quant[0], group_size=quant[1])
    model.load_weights(file, strict=True)
    gen = models.LmGen(model=model, max_steps=steps + warmup + 5, text_sampler=utils.Sampler(temp=0.0),
                       audio_sampler=utils.Sampler(temp=0.0), check=False)
    codes = mx.array(_user_codes(steps + warmup + 2, cfg.audio_vocab_size - 1))

    def step(t):  # their local.py loop: step, read the text token and the frame
        text = gen.step(codes[t][None])[0].item()
        frame = gen.last_audio_tokens()
        return text, None if frame is None else np.array(frame)

    for t in range(warmup):
        step(t)
    times = []
    with counting_syncs() as syncs:
        for t in range(warmup, warmup + steps):
            start, cpu = time.perf_counter(), time.process_time()
            step(t)
            times.append((time.perf_counter() - start, time.process_time() - cpu))
    ops = _count_graph_ops(lambda i: step(steps + warmup + i))
    return {"times": times, "syncs": syncs["n"] / steps, "graph_ops": ops}


def _run_worker(python: str, args: list[str], env: dict[str, str]) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", *args]
    env = dict(env)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/")
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def weight_bytes_per_step(file: Path) -> int:
    """Bytes of weights one LM step reads: every tensor of the safetensors file (read from its header) but
    the embedding tables, of which a step reads one row each."""
    import struct

    with open(file, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    header.pop("__metadata__", None)
    return sum(end - start for name, info in header.items() for start, end in [info["data_offsets"]]
               if not {"text_emb", "audio_embs", "emb"} & set(name.split(".")))


def _stats(times: list[list[float]]) -> tuple[float, float, float]:
    """Median and p90 wall ms, median CPU ms."""
    wall = sorted(1000 * t[0] for t in times)
    cpu = sorted(1000 * t[1] for t in times)
    return wall[len(wall) // 2], wall[min(len(wall) - 1, int(0.9 * len(wall)))], cpu[len(cpu) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("moshi-mlx-bench lm", __doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,mid", help="generated LM sizes to time, comma-separated")
    parser.add_argument("--precisions", default="bf16,q8,q4", help="comma-separated")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out", metavar="DIR", help="DIR: where the random checkpoints the benchmark generates are written once and reused")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per side; best median kept")
    parser.add_argument("--reference-python", dest="ref_python", default=str(DEFAULT_REF_PYTHON), metavar="PY",
                        help="interpreter with Kyutai's moshi_mlx (bash tests/reference/build_envs.sh)")
    parser.add_alias("--ref-python", dest="ref_python")
    parser.add_argument("--model", dest="checkpoint", type=Path, default=None, metavar="DIR",
                        help="time an existing folder (Kyutai MLX layout + config.json, e.g. a 7B from "
                             "moshi-mlx-convert) instead of generated configs; its precisions present are run")
    parser.add_alias("--checkpoint", dest="checkpoint", type=Path)
    parser.add_argument("--only", default=None, help="rows to run, comma-separated: ours,ours@ref,moshi_mlx")
    parser.add_argument("--bandwidth", type=float, default=None, metavar="GB/s",
                        help="nominal memory bandwidth: adds weight GB read per step and %% of this roofline")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    blas.add_argument(parser)
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        who, file, config, steps, warmup, quant = args.worker
        quant = json.loads(quant)
        if who == "ours":
            result = worker_ours(file, config, int(steps), int(warmup))
        else:
            result = worker_theirs(file, config, int(steps), int(warmup), quant)
        # ru_maxrss is KiB on Linux, bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        import mlx.core as mx

        result["mlx"] = f"{mx.__version__} {mx.default_device().type.name}"
        result["blas"] = blas.probe()
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
        print(json.dumps(result))
        return 0

    sys.path.insert(0, str(REPO))
    env, blas_header = blas.setup(args.blas)
    labels = ("ours", "ours@ref", "moshi_mlx")
    only = labels if args.only is None else tuple(args.only.split(","))
    if set(only) - set(labels):
        parser.error(f"--only: rows are {','.join(labels)}")
    print(blas_header)
    print(f"{'config':6} {'prec':5} {'who':9} {'median ms':>9} {'p90 ms':>8} {'ratio':>6} {'cpu ms':>8} "
          f"{'ratio':>6} {'rss MB':>8} {'syncs':>6} {'ops':>6}"
          + (f" {'GB/step':>7} {'% BW':>5}" if args.bandwidth else "") + "  mlx")
    targets = [(args.checkpoint.name, args.checkpoint.resolve())] if args.checkpoint else [
        (name, args.out / f"lm_{name}") for name in args.configs.split(",")]
    rows, checks = [], {}
    for name, folder in targets:
        if args.checkpoint is None:
            _make_checkpoints(name, folder)
        for precision in args.precisions.split(","):
            file, quant = PRECISIONS[precision]
            if not (folder / file).exists():
                continue
            common = [str(folder / file), str(folder / "config.json"), str(args.steps), str(args.warmup),
                      json.dumps(quant)]
            sides = [side for side in (("ours", sys.executable, "ours"), ("ours@ref", args.ref_python, "ours"),
                                       ("moshi_mlx", args.ref_python, "theirs")) if side[0] in only]
            runs = {label: [] for label, _, _ in sides}
            for _ in range(args.rounds):
                for label, python, who in sides:
                    runs[label].append(_run_worker(python, [who, *common], env))
            best = {label: min(results, key=lambda r: _stats(r["times"])[0]) for label, results in runs.items()}
            their_med, _, their_cpu = _stats(best["moshi_mlx"]["times"]) if "moshi_mlx" in best else (0, 0, 0)
            step_gb = weight_bytes_per_step(folder / file) / 1e9
            for label, _, _ in sides:
                res = best[label]
                checks[label] = blas.describe(args.blas, res["blas"])
                med, p90, cpu = _stats(res["times"])
                ratio, cpu_ratio = (("", "") if label == "moshi_mlx" or not their_med else
                                    (f"{med / their_med:.2f}", f"{cpu / their_cpu:.2f}"))
                roofline = (f" {step_gb:7.3f} {100 * step_gb / (med / 1e3) / args.bandwidth:5.1f}"
                            if args.bandwidth else "")
                print(f"{name:6} {precision:5} {label:9} {med:9.2f} {p90:8.2f} {ratio:>6} {cpu:8.2f} {cpu_ratio:>6} "
                      f"{res['peak_rss_mb']:8.0f} {res['syncs']:6.2f} {res['graph_ops']:6.0f}{roofline}  {res['mlx']}",
                      flush=True)
                rows.append({"config": name, "precision": precision, "who": label, "median_ms": med, "p90_ms": p90,
                             "cpu_ms": cpu, "peak_rss_mb": res["peak_rss_mb"], "weight_gb_per_step": step_gb,
                             "mlx": res["mlx"], "blas": checks[label]})
    print(f"BLAS check ({blas.PROBE_SIZE}^2 fp32 matmul on the CPU, in each worker): "
          + "; ".join(f"{label} {text}" for label, text in checks.items()))
    if args.json:
        args.json.write_text(json.dumps({"blas": blas_header, "bandwidth_gbs": args.bandwidth, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
