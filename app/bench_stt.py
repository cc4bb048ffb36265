"""Speech-to-text speed: `moshi-mlx-transcribe`'s path vs Kyutai's moshi_mlx STT path, same weights, one run.

Ours: `moshi_mlx.load(..., kind="stt").transcriber().transcribe(pcm)` (the codec encodes the recording in
batches, then one compiled LM step per frame; `--dtype` as the CLI's, default auto). Kyutai's, in its own
environment (`--reference-python`): rustymimi's `Tokenizer.encode_step` per frame and moshi_mlx's `Lm` +
`LmGen.step_with_extra_heads` in bf16, as its `run_inference` and the DSM `stt_from_file_mlx.py` do,
reading one token per step. Both run the DSM protocol (1 s of silence, the audio, the 0.5 s delay of
silence) on the same input. Without `--model`, a random checkpoint of Kyutai's STT shape (`--size 1b`:
stt-1b-en_fr, 2048 wide, 16 layers; `mid`: 1024 wide, 8 layers) with a random published-size Mimi is written
once under `--out`.

    moshi-mlx-bench stt --size 1b --seconds 10
    moshi-mlx-bench stt --size mid --seconds 600 --only ours     # peak RSS over a 10-minute file
Prints wall time, real-time factor (wall / audio seconds), our/their ratio, each process's peak RSS and,
for ours, the RSS after each tenth of the run (flat = no growth with length).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

try:
    from . import blas
    from .bench_sides import REPO, add_reference_args, report, run_sides, test_signal
    from .memory import peak_rss_mb, rss_mb
    from .cli_parser import make_parser
except ImportError:  # run as a script (the workers, Kyutai's side too): no parent package; app/ is on sys.path
    import blas
    from bench_sides import REPO, add_reference_args, report, run_sides, test_signal
    from memory import peak_rss_mb, rss_mb
    from cli_parser import make_parser

FRAME, RATE, FRAME_RATE = 1920, 24000, 12.5
MIMI_NAME = "mimi-pytorch-e351c8d8@125.safetensors"
TOKENIZER_NAME = "tokenizer_en_fr_audio_8000.model"
SIZES = {"1b": {"dim": 2048, "num_heads": 16, "num_layers": 16, "context": 750},
         "mid": {"dim": 1024, "num_heads": 8, "num_layers": 8, "context": 750}}


def stt_config(size: str) -> dict:
    """Kyutai's stt-1b-en_fr config.json schema; `size` sets the width and depth."""
    cfg = {"text_card": 8000, "existing_text_padding_id": 3, "n_q": 32, "dep_q": 0, "card": 2048,
           "hidden_scale": 4.125, "causal": True, "layer_scale": None, "max_period": 100000,
           "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 1024,
           "depformer_dim_feedforward": None, "depformer_num_heads": 16, "depformer_num_layers": 6,
           "depformer_pos_emb": "none", "depformer_weights_per_step": True, "depformer_multi_linear": True,
           "delays": [0] * 33, "extra_heads_num_heads": 4, "extra_heads_dim": 6, "model_type": "stt",
           "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 1.0},
           "mimi_name": MIMI_NAME, "tokenizer_name": TOKENIZER_NAME, "moshi_name": "model.safetensors"}
    cfg.update(SIZES[size])
    return cfg


def make_checkpoint(out: Path, size: str) -> Path:
    """The random checkpoint folder for `size` under `out`, written once."""
    from .bench_mimi import write_random_checkpoint
    from moshi_mlx.demo import train_tokenizer, write_random_lm

    folder = out / f"stt_{size}"
    if not (folder / "model.safetensors").exists():
        write_random_lm(folder, stt_config(size))
    if not (folder / TOKENIZER_NAME).exists():
        train_tokenizer(folder / TOKENIZER_NAME)  # 300 pieces: ids beyond are not text, fine for timing
    if not (folder / MIMI_NAME).exists():
        partial = folder / "partial-mimi.safetensors"  # save_safetensors insists on the suffix
        write_random_checkpoint(partial, seed=0)
        partial.rename(folder / MIMI_NAME)
    return folder


def run_ours(folder: Path, seconds: float, warmup: float, dtype: str) -> dict:
    import mlx.core as mx

    from moshi_mlx.loading import load

    model = load(folder, dtype=dtype, kind="stt")
    stt = model.transcriber(seed=0)
    stt.transcribe(test_signal(warmup))  # compiles, first allocations
    pcm = test_signal(seconds)
    trace = []

    def on_step(step: int, total: int) -> None:
        if step % max(1, total // 10) == 0 and sys.platform.startswith("linux"):
            trace.append(round(rss_mb()))

    t0 = time.perf_counter()
    transcript = stt.transcribe(pcm, on_step=on_step)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "audio_s": len(pcm) / RATE, "steps": len(transcript.tokens),
            "peak_rss_mb": peak_rss_mb(), "rss_trace_mb": trace, "dtype": str(model.lm.dtype),
            "blas": blas.probe(), "mlx": mx.__version__}


def run_kyutai(folder: Path, seconds: float, warmup: float, dtype: str) -> dict:
    """Runs inside Kyutai's environment (moshi_mlx 0.3.0, rustymimi)."""
    import mlx.core as mx
    import numpy as np
    import rustymimi
    from moshi_mlx import models
    from moshi_mlx.models.generate import LmGen
    from moshi_mlx.utils import sampling

    raw = json.loads((folder / "config.json").read_text())
    cfg = models.LmConfig.from_config_dict(raw)
    model = models.Lm(cfg)
    model.set_dtype(mx.bfloat16)  # as its scripts do
    model.load_weights(str(folder / "model.safetensors"), strict=True)
    model.warmup()
    stt = raw["stt_config"]
    prefix = math.ceil(stt["audio_silence_prefix_seconds"] * FRAME_RATE)
    flush = math.ceil(stt["audio_delay_seconds"] * FRAME_RATE)

    def transcribe(pcm):
        frames = -(-len(pcm) // FRAME)
        stream = np.zeros((prefix + frames + flush) * FRAME, dtype=np.float32)
        stream[prefix * FRAME:prefix * FRAME + len(pcm)] = pcm
        tok = rustymimi.Tokenizer(str(folder / MIMI_NAME), num_codebooks=32)
        steps = len(stream) // FRAME
        gen = LmGen(model, max_steps=steps, text_sampler=sampling.Sampler(temp=0.0, top_k=25),
                    audio_sampler=sampling.Sampler(temp=0.8, top_k=250), check=False)
        for c in model.transformer_cache:
            c.reset()
        tokens = []
        for i in range(steps):
            codes = tok.encode_step(stream[None, None, i * FRAME:(i + 1) * FRAME])
            text, heads = gen.step_with_extra_heads(mx.array(codes).transpose(0, 2, 1)[0])
            tokens.append(text[0].item())
            _ = heads[2][0, 0, 0].item()  # the end-of-turn probability, read each step as DSM's --vad does
        return tokens

    transcribe(test_signal(warmup))
    pcm = test_signal(seconds)
    t0 = time.perf_counter()
    tokens = transcribe(pcm)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "audio_s": len(pcm) / RATE, "steps": len(tokens), "peak_rss_mb": peak_rss_mb(),
            "rss_trace_mb": [], "dtype": "mlx.core.bfloat16", "blas": blas.probe(), "mlx": mx.__version__}


def main(argv=None) -> int:
    p = make_parser("moshi-mlx-bench stt", __doc__)
    p.add_argument("--model", dest="checkpoint", type=Path, metavar="DIR",
                   help="folder: an STT checkpoint in Kyutai's MLX layout (bf16 model.safetensors, config.json, "
                        "the Mimi file) (default: a random one of --size, written once under --out)")
    p.add_argument("--size", choices=sorted(SIZES), default="1b", help="of the generated checkpoint")
    p.add_argument("--out", type=Path, default=REPO / "bench-out", metavar="DIR",
                   help="DIR: where the generated checkpoints are written once and reused")
    p.add_argument("--seconds", type=float, default=10.0, help="timed input length")
    p.add_argument("--warmup-seconds", type=float, default=1.0, help="untimed run first (compiles, allocates)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="our LM compute dtype (as moshi-mlx-transcribe's); Kyutai's runs bf16")
    add_reference_args(p)
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    blas.add_argument(p)
    a = p.parse_args(argv)
    if a.worker:
        run = run_ours if a.worker == "ours" else run_kyutai
        print(json.dumps(run(a.checkpoint, a.seconds, a.warmup_seconds, a.dtype)))
        return 0
    env, blas_header = blas.setup(a.blas)
    if a.checkpoint is None:
        a.checkpoint = make_checkpoint(a.out, a.size)
    a.checkpoint = a.checkpoint.resolve()
    rows = run_sides(__file__, a.ref_python, ["--model", str(a.checkpoint), "--seconds", str(a.seconds),
                                              "--warmup-seconds", str(a.warmup_seconds), "--dtype", a.dtype],
                     env, a.only)
    if rows is None:
        return 1
    print(f"checkpoint {a.checkpoint}, {a.seconds:g} s of input after {a.warmup_seconds:g} s of warm-up; "
          f"{blas_header}")
    print(f"{'':8} {'wall s':>8} {'RTF':>7} {'steps':>6} {'peak RSS MB':>12}  {'dtype':<18} mlx")
    for side, r in rows.items():
        print(f"{side:8} {r['wall_s']:8.2f} {r['wall_s'] / r['audio_s']:7.3f} {r['steps']:6d} "
              f"{r['peak_rss_mb']:12.0f}  {r['dtype'].replace('mlx.core.', ''):<18} {r['mlx']}")
        if r["rss_trace_mb"]:
            print(f"{'':8} RSS by tenths of the run (MB): {r['rss_trace_mb']}")
    if len(rows) == 2:
        print(f"ours / kyutai wall time: {rows['ours']['wall_s'] / rows['kyutai']['wall_s']:.2f}")
    report(a, blas_header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
