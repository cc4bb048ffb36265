"""Offline chain speed: our `moshi-mlx-offline` path vs the same chain built from Kyutai's pieces.

Ours: `moshi_mlx.load` + `Engine.run_offline` (encode, LM step and decode pipelined: `Engine.stream`).
Kyutai's, in its own environment (`--reference-python`, default `.ref/mlx/bin/python`): rustymimi's streaming
encoder, moshi_mlx's `Lm` + `LmGen`, rustymimi's streaming decoder, one frame at a time, as its
`moshi_mlx.local` does. Both run on the same files (a checkpoint folder with Kyutai's MLX-layout LM file,
its config.json and the published-size Mimi) and the same input, with the default sampling. Without
`--model`, a random mid-size LM (app/bench_lm.py's) and a random published-size Mimi are written once
under `--out`. `--blas` picks the BLAS of both sides (app/blas.py).

    python -m app.bench_offline --model DIR --seconds 10
Prints wall time, real-time factor (wall / audio seconds; < 1 is faster than real time), our/their ratio,
and each process's peak RSS.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

try:
    from . import blas
    from .bench_sides import REPO, add_reference_args, report, run_sides, test_signal
    from .memory import peak_rss_mb
    from .cli_parser import make_parser
except ImportError:  # run as a script (the workers, Kyutai's side too): no parent package; app/ is on sys.path
    import blas
    from bench_sides import REPO, add_reference_args, report, run_sides, test_signal
    from memory import peak_rss_mb
    from cli_parser import make_parser

FRAME, RATE = 1920, 24000
QUANT = {"model.q8.safetensors": (8, 64), "model.q4.safetensors": (4, 32)}


def make_checkpoint(out: Path, precision: str = "bf16") -> Path:
    """A chain checkpoint folder under `out`, written once: bench_lm's random mid-size LM at `precision`
    (Kyutai's MLX layout, config.json) and bench_mimi's random published-size Mimi. Returns the folder."""
    from .bench_lm import PRECISIONS, _make_checkpoints
    from .bench_mimi import write_random_checkpoint
    from moshi_mlx.constants import MIMI_FILE

    lm_dir, folder = out / "lm_mid", out / f"chain_mid_{precision}"
    _make_checkpoints("mid", lm_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (PRECISIONS[precision][0], "config.json"):
        if not (folder / name).exists():
            try:
                os.link(lm_dir / name, folder / name)
            except OSError:  # another file system
                shutil.copyfile(lm_dir / name, folder / name)
    if not (folder / MIMI_FILE).exists():
        partial = folder / f"partial-{MIMI_FILE}"  # save_safetensors insists on the suffix
        write_random_checkpoint(partial, seed=0)
        partial.rename(folder / MIMI_FILE)  # a half-written file never looks complete
    return folder


def run_ours(folder: Path, seconds: float, warmup: float) -> dict:
    from moshi_mlx.engine import SamplingParams
    from moshi_mlx.loading import load

    model = load(folder)
    engine = model.engine(SamplingParams(seed=0))
    engine.run_offline(test_signal(warmup))  # warm-up: compile, first allocations
    pcm = test_signal(seconds)
    t0 = time.perf_counter()
    engine.run_offline(pcm)
    wall = time.perf_counter() - t0
    import mlx.core as mx

    return {"wall_s": wall, "audio_s": len(pcm) / RATE, "peak_rss_mb": peak_rss_mb(), "blas": blas.probe(),
            "mlx": mx.__version__}


def run_kyutai(folder: Path, seconds: float, warmup: float) -> dict:
    """Runs inside Kyutai's environment (moshi_mlx 0.3.0, rustymimi)."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    import rustymimi
    from moshi_mlx import models
    from moshi_mlx.models.generate import LmGen
    from moshi_mlx.utils import sampling

    lm_file = next(folder / n for n in ("model.q4.safetensors", "model.q8.safetensors", "model.safetensors")
                   if (folder / n).exists())
    cfg = models.LmConfig.from_config_dict(json.loads((folder / "config.json").read_text()))
    model = models.Lm(cfg)
    model.set_dtype(mx.bfloat16)
    if lm_file.name in QUANT:
        bits, group = QUANT[lm_file.name]
        nn.quantize(model, bits=bits, group_size=group)
    model.load_weights(str(lm_file), strict=True)
    model.warmup()
    mimi = next(folder.glob("tokenizer-*.safetensors"))

    def poll(get):
        while True:
            v = get()
            if v is not None:
                return v
            time.sleep(0.0005)

    def chain(pcm):
        tok = rustymimi.StreamTokenizer(str(mimi))
        frames = len(pcm) // FRAME
        gen = LmGen(model, max_steps=frames + 4, text_sampler=sampling.Sampler(temp=0.7, top_k=25),
                    audio_sampler=sampling.Sampler(temp=0.8, top_k=250))
        for c in model.transformer_cache:
            c.reset()
        for i in range(frames):
            tok.encode(pcm[i * FRAME:(i + 1) * FRAME])
            codes = poll(tok.get_encoded)
            gen.step(mx.array(np.asarray(codes).reshape(1, -1)))  # rustymimi gives one frame of codes
            audio = gen.last_audio_tokens()
            if audio is not None:
                tok.decode(np.array(audio).astype(np.uint32))
                poll(tok.get_decoded)

    chain(test_signal(warmup))
    pcm = test_signal(seconds)
    t0 = time.perf_counter()
    chain(pcm)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "audio_s": len(pcm) // FRAME * FRAME / RATE, "peak_rss_mb": peak_rss_mb(),
            "blas": blas.probe(), "mlx": mx.__version__}


def main(argv=None) -> int:
    p = make_parser("moshi-mlx-bench offline", __doc__.splitlines()[0])
    p.add_argument("--model", dest="checkpoint", type=Path, metavar="DIR",
                   help="folder: Kyutai-MLX-layout LM file, config.json, published-size Mimi file "
                        "(default: a random mid-size LM and Mimi, written once under --out)")
    p.add_argument("--precision", choices=["bf16", "q8", "q4"], default="bf16",
                   help="of the generated LM (without --model)")
    p.add_alias("--checkpoint", dest="checkpoint", type=Path)
    p.add_argument("--out", type=Path, default=REPO / "bench-out", metavar="DIR", help="DIR: where the random checkpoints the benchmark generates are written once and reused")
    p.add_argument("--seconds", type=float, default=10.0, help="timed input length")
    p.add_argument("--warmup-seconds", type=float, default=1.0, help="untimed run first (compiles, allocates)")
    add_reference_args(p, only=False)
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    blas.add_argument(p)
    a = p.parse_args(argv)
    if a.worker:
        result = (run_ours if a.worker == "ours" else run_kyutai)(a.checkpoint, a.seconds, a.warmup_seconds)
        print(json.dumps(result))
        return 0
    env, blas_header = blas.setup(a.blas)
    if a.checkpoint is None:
        a.checkpoint = make_checkpoint(a.out, a.precision)
    a.checkpoint = a.checkpoint.resolve()  # Kyutai's side runs from /
    # Each side on its own MLX (ours needs >= 0.32: its pipeline evaluates from three threads). The CPU
    # kernels differ between versions (bf16 matvecs of 16k-32k rows: ~1.5x slower in 0.32.4 than 0.26.5);
    # `moshi-mlx-bench lm` has an ours@ref row that compares the LM step on one MLX.
    rows = run_sides(__file__, a.ref_python, ["--model", str(a.checkpoint), "--seconds", str(a.seconds),
                                              "--warmup-seconds", str(a.warmup_seconds)], env)
    if rows is None:
        return 1
    print(f"checkpoint {a.checkpoint}, {a.seconds:g} s of input after {a.warmup_seconds:g} s of warm-up; "
          f"{blas_header}")
    print(f"{'':8} {'wall s':>8} {'RTF':>7} {'peak RSS MB':>12}  mlx")
    for side, r in rows.items():
        print(f"{side:8} {r['wall_s']:8.2f} {r['wall_s'] / r['audio_s']:7.3f} {r['peak_rss_mb']:12.0f}  {r['mlx']}")
    print(f"ours / kyutai wall time: {rows['ours']['wall_s'] / rows['kyutai']['wall_s']:.2f}")
    report(a, blas_header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
