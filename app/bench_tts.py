"""Text-to-speech speed: `moshi-mlx-speak`'s path vs Kyutai's moshi_mlx TTS path, same weights, one run.

Ours: `moshi_mlx.load(..., kind="tts").speaker(voice, cfg=2.0, temp, seed=0)`, then `speaker.speak(text)`
(one LM step per 80 ms frame, the depth transformer from step 16 on, each frame decoded by our streaming
Mimi as it comes; `--dtype` as the CLI's, default auto). Kyutai's, in its own environment
(`--reference-python`): moshi_mlx 0.3.0's `TTSModel.generate` on its `Lm` loaded from the PyTorch file in
bf16, as its `run_tts.py` builds it (the cfg value 2.0 as a condition of the CFG-distilled model, its
padding defaults), each frame decoded by its MLX Mimi's `decode_step` in `generate`'s `on_frame` hook, so
that its first audio is timed as a streaming caller of its API would get it (`run_tts.py` itself decodes
only after the whole generation). Both sides speak the same script with the same voice file, temperature
and padding rules; the clock starts before the speaker / the voice and conditions are made and stops at the
last decoded frame. Without `--model`, a random checkpoint of `kyutai/tts-1.6b-en_fr`'s shape in its
PyTorch layout (`--size 1.6b`: 2048 wide, 16 layers, the published depth transformer; `mid`: 1024 wide,
8 layers) with a random published-size Mimi, a tokenizer and a random voice is written once under `--out`.
Its text head always prefers PAD, so both sides place every word when `max_padding` forces it (about nine
steps a word, plus 22) and run the same number of steps.

    moshi-mlx-bench tts --size 1.6b
    moshi-mlx-bench tts --size mid --temp 0 --only ours
Prints time to first audio, wall time, real-time factor (wall / audio seconds), steps and ms per step,
each process's peak RSS, and the our/their ratios.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

try:
    from . import blas
    from .bench_sides import REPO, add_reference_args, report, run_sides
    from .memory import peak_rss_mb
    from .cli_parser import make_parser
except ImportError:  # run as a script (the workers, Kyutai's side too): no parent package; app/ is on sys.path
    import blas
    from bench_sides import REPO, add_reference_args, report, run_sides
    from memory import peak_rss_mb
    from cli_parser import make_parser

FRAME, RATE = 1920, 24000
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_NAME = "tokenizer_spm_8k_en_fr_audio.model"
VOICE_NAME = "bench_voice.wav"  # a voice name as in kyutai/tts-voices; the file appends .<sig>@<epoch>.safetensors
VOICE_DIM, VOICE_FRAMES = 512, 125
CFG = 2.0  # the distilled model's `cfg` condition, as run_tts's default --cfg-coef
DEFAULT_TEXT = "The quick brown fox jumps over lazy dogs."  # 8 words: ~94 steps, ~6 s of audio
SIZES = {"1.6b": {"dim": 2048, "num_heads": 16, "num_layers": 16},
         "mid": {"dim": 1024, "num_heads": 8, "num_layers": 8}}
# The random text head: PAD's logit is TEXT_GAIN * channel 0 of the final norm's output, every other logit 0.
# Channel 0 of the residual stream is held at RESIDUAL_BIAS by the `control` condition (summed into every
# step's input) and written by no layer, so after the RMS norm it is ~40 whatever the state: PAD's logit ~6
# wins greedily and at temperature 0.6 (new word ~1e-4 per step). Words then come when max_padding forces them.
RESIDUAL_BIAS, TEXT_GAIN, PAD = 1000.0, 0.15, 3


def tts_config(size: str) -> dict:
    """Kyutai's tts-1.6b-en_fr config.json schema; `size` sets the temporal transformer's width and depth."""
    model_id = {"sig": f"rand{size.replace('.', '')}", "epoch": 1}
    cfg = {
        "card": 2048, "n_q": 32, "dep_q": 32, "delays": [0, 0] + [2] * 31, "dim": 2048, "text_card": 8000,
        "existing_text_padding_id": 3, "num_heads": 16, "num_layers": 16, "hidden_scale": 4.125, "causal": True,
        "layer_scale": None, "context": 500, "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
        "positional_embedding": "rope", "depformer_dim": 1024, "depformer_num_heads": 16,
        "depformer_num_layers": 4, "depformer_dim_feedforward": 3072, "depformer_multi_linear": True,
        "depformer_pos_emb": "none", "depformer_weights_per_step": True, "depformer_low_rank_embeddings": 128,
        "demux_second_stream": True, "text_card_out": None, "cross_attention": True,
        "conditioners": {
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": VOICE_DIM}},
            "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop",
                                           "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]}},
            "control": {"type": "lut", "lut": {"dim": 2048, "n_bins": 1, "tokenizer": "noop",
                                               "possible_values": ["ok"]}},
        },
        "fuser": {"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1, "sum": ["control", "cfg"],
                  "prepend": [], "cross": ["speaker_wavs"]},
        "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
        "model_id": model_id,
        "depformer_weights_per_step_schedule": list(range(8)) + [8] * 8 + [9] * 8 + [10] * 8,
        "tokenizer_name": TOKENIZER_NAME, "mimi_name": MIMI_NAME,
        "moshi_name": f"dsm_tts_{model_id['sig']}@{model_id['epoch']}.safetensors",
        "model_type": "tts", "lm_gen_config": {"temp": 0.6, "text_temp": 0.6},
    }
    cfg.update(SIZES[size])
    return cfg


def voice_file(folder: Path, model_id: dict) -> Path:
    """The voice file for the checkpoint in `folder`: `<name>.wav.<sig>@<epoch>.safetensors`, the first by name."""
    found = sorted(folder.glob(f"*.wav.{model_id['sig']}@{model_id['epoch']}.safetensors"))
    if not found:
        raise SystemExit(f"error: no voice file *.wav.{model_id['sig']}@{model_id['epoch']}.safetensors in {folder}")
    return found[0]


def _torch_shapes(config):
    # convert/ is this folder's sibling: `convert` in the checkout, `moshi_mlx.convert` once installed.
    root = (__package__ or "").rpartition(".")[0]
    return importlib.import_module(f"{root}.convert.pytorch_to_mlx".lstrip(".")).torch_shapes(config)


def random_tts_weights(config: dict, seed: int = 0) -> dict:
    """Every tensor of Kyutai's PyTorch layout for `config`, random (bf16; the conditioners float32).

    Matrices N(0, 1/fan_in), embedding tables N(0, 1), norms 1, biases 0; the text head and channel 0 of the
    residual stream as RESIDUAL_BIAS says (so that both implementations run the same steps).
    """
    import mlx.core as mx

    from moshi_mlx.lm import LmConfig

    shapes = _torch_shapes(LmConfig.from_dict(config))
    table = ("emb.", "text_emb.weight", "depformer_emb.", "depformer_text_emb.weight", "embed.weight")
    residual_writers = (".self_attn.out_proj.weight", ".cross_attention.out_proj.weight", ".gating.linear_out.weight")
    keys = mx.random.split(mx.random.key(seed), len(shapes))
    out = {}
    for key, (name, shape) in zip(keys, sorted(shapes.items())):
        if name.endswith(".alpha") or name.endswith("norm_cross.weight"):
            w = mx.ones(shape)
        elif name.endswith(".bias"):
            w = mx.zeros(shape)
        elif name.endswith("learnt_padding"):
            w = 0.2 * mx.random.normal(shape, key=key)
        elif name == "text_linear.weight":
            w = mx.zeros(shape).at[PAD, 0].add(TEXT_GAIN)
        elif name == "condition_provider.conditioners.control.embed.weight":
            w = mx.ones(shape)
        elif name.endswith(table) and not name.endswith((".low_rank.weight", ".out1.weight", ".out2.weight")):
            w = mx.random.normal(shape, key=key)
        else:
            w = mx.random.normal(shape, key=key) / shape[-1] ** 0.5
        if name == "condition_provider.conditioners.control.output_proj.weight":
            w[0] = RESIDUAL_BIAS / shape[1]  # the embedding is all ones: channel 0 of the sum = RESIDUAL_BIAS
        elif name == "condition_provider.conditioners.cfg.output_proj.weight" or (
                name.startswith("transformer.") and name.endswith(residual_writers)):
            w[0] = 0.0
        w = w.astype(mx.float32 if name.startswith("condition_provider.") else mx.bfloat16)
        mx.eval(w)
        out[name] = w
    return out


def make_checkpoint(out: Path, size: str) -> Path:
    """The random checkpoint folder for `size` under `out` (PyTorch layout, as published), written once."""
    import mlx.core as mx

    from .bench_mimi import write_random_checkpoint
    from moshi_mlx.demo import train_tokenizer

    folder = out / f"tts_{size}"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tts_config(size)
    model_id = cfg["model_id"]
    if not (folder / cfg["moshi_name"]).exists():
        partial = folder / "partial-lm.safetensors"  # save_safetensors insists on the suffix
        mx.save_safetensors(str(partial), random_tts_weights(cfg))
        partial.rename(folder / cfg["moshi_name"])
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if not (folder / TOKENIZER_NAME).exists():
        train_tokenizer(folder / TOKENIZER_NAME)  # 300 pieces: ids beyond are not text, fine for timing
    if not (folder / MIMI_NAME).exists():
        partial = folder / "partial-mimi.safetensors"
        write_random_checkpoint(partial, seed=0)
        partial.rename(folder / MIMI_NAME)
    voice = folder / f"{VOICE_NAME}.{model_id['sig']}@{model_id['epoch']}.safetensors"
    if not voice.exists():
        emb = mx.random.normal((1, VOICE_DIM, VOICE_FRAMES), key=mx.random.key(1))
        mx.save_safetensors(str(voice), {"speaker_wavs": emb},
                            metadata={"sig": model_id["sig"], "epoch": str(model_id["epoch"])})
    return folder


def run_ours(folder: Path, text: str, warmup_text: str, dtype: str, temp: float) -> dict:
    import mlx.core as mx

    from moshi_mlx.loading import load

    t0 = time.perf_counter()
    model = load(folder, dtype=dtype, kind="tts")  # reads every weight
    load_s = time.perf_counter() - t0
    voice = voice_file(folder, json.loads((folder / "config.json").read_text())["model_id"])

    def speak(script: str) -> dict:
        start = time.perf_counter()
        speaker = model.speaker(voice=str(voice), cfg=CFG, temp=temp, seed=0)  # the voice, the conditions
        setup = time.perf_counter() - start
        first, samples = None, 0
        for frame in speaker.speak(script):
            if first is None:
                first = time.perf_counter() - start
            samples += len(frame)
        wall = time.perf_counter() - start
        return {"first_audio_s": first, "wall_s": wall, "setup_s": setup, "audio_s": samples / RATE,
                "steps": len(speaker.last.text_tokens), "words": len(speaker.last.words)}

    if warmup_text:
        speak(warmup_text)  # compiles, first allocations
    r = speak(text)
    r.update({"load_s": load_s, "peak_rss_mb": peak_rss_mb(), "dtype": str(model.lm.dtype), "blas": blas.probe(),
              "mlx": mx.__version__})
    return r


def run_kyutai(folder: Path, text: str, warmup_text: str, temp: float) -> dict:
    """Runs inside Kyutai's environment (moshi_mlx 0.3.0), as its run_tts.py builds the model."""
    import types

    try:  # moshi_mlx.models.tts imports sphn (audio files) at module level; only get_prefix uses it here.
        import sphn  # noqa: F401
    except ImportError:
        sys.modules["sphn"] = types.ModuleType("sphn")
    import mlx.core as mx
    import numpy as np
    import sentencepiece
    from moshi_mlx import models
    from moshi_mlx.models.tts import TTSModel

    t0 = time.perf_counter()
    raw = json.loads((folder / "config.json").read_text())
    lm_config = models.LmConfig.from_config_dict(raw)
    model = models.Lm(lm_config)
    model.set_dtype(mx.bfloat16)
    model.load_pytorch_weights(str(folder / raw["moshi_name"]), lm_config, strict=True)
    tokenizer = sentencepiece.SentencePieceProcessor(str(folder / raw["tokenizer_name"]))
    mimi = models.mimi.Mimi(models.mimi_202407(lm_config.generated_codebooks))
    mimi.load_pytorch_weights(str(folder / raw["mimi_name"]), strict=True)
    mx.eval(model.parameters(), mimi.parameters())  # read now, as ours does, not inside the first generate
    load_s = time.perf_counter() - t0
    mx.random.seed(0)
    tts = TTSModel(model, mimi, tokenizer, temp=temp, cfg_coef=CFG, max_padding=8, initial_padding=2,
                   final_padding=4, padding_bonus=0.0, raw_config=raw)
    assert tts.valid_cfg_conditionings, "not a CFG-distilled model"
    cfg_condition, tts.cfg_coef = tts.cfg_coef, 1.0  # as run_tts.py does for a distilled model
    voice = str(voice_file(folder, raw["model_id"]))
    voice_name = voice[:-len(tts.voice_suffix)]

    def speak(script: str) -> dict:
        start = time.perf_counter()
        entries = tts.prepare_script([script], padding_between=1)
        attributes = tts.make_condition_attributes([tts.get_voice_path(voice_name)], cfg_condition)
        setup = time.perf_counter() - start
        first, samples = [None], [0]

        def on_frame(frame):
            pcm = np.array(tts.mimi.decode_step(frame[:, :, None])[0, 0])
            if first[0] is None:
                first[0] = time.perf_counter() - start
            samples[0] += pcm.shape[-1]

        result = tts.generate([entries], [attributes], cfg_is_no_prefix=False, cfg_is_no_text=False,
                              on_frame=on_frame)
        wall = time.perf_counter() - start
        return {"first_audio_s": first[0], "wall_s": wall, "setup_s": setup, "audio_s": samples[0] / RATE,
                "steps": len(result.logged_text_tokens[0]), "words": len(result.all_transcripts[0])}

    if warmup_text:
        speak(warmup_text)
    r = speak(text)
    r.update({"load_s": load_s, "peak_rss_mb": peak_rss_mb(), "dtype": "mlx.core.bfloat16", "blas": blas.probe(),
              "mlx": mx.__version__})
    return r


def main(argv=None) -> int:
    p = make_parser("moshi-mlx-bench tts", __doc__)
    p.add_argument("--model", dest="checkpoint", type=Path, metavar="DIR",
                   help="folder: a TTS checkpoint in Kyutai's PyTorch layout (config.json, the LM file it names, "
                        "the Mimi, the tokenizer, a voice file *.wav.<sig>@<epoch>.safetensors) (default: a "
                        "random one of --size, written once under --out)")
    p.add_argument("--size", choices=sorted(SIZES), default="1.6b", help="of the generated checkpoint")
    p.add_argument("--out", type=Path, default=REPO / "bench-out", metavar="DIR",
                   help="DIR: where the generated checkpoints are written once and reused")
    p.add_argument("--text", default=DEFAULT_TEXT, help="the timed script (about nine steps a word)")
    p.add_argument("--warmup-text", default="Hello.", help="spoken untimed first (compiles, allocates); '' for none")
    p.add_argument("--temp", type=float, default=0.6, help="sampling temperature of text and audio, both sides")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="our LM compute dtype (as moshi-mlx-speak's); Kyutai's runs bf16")
    add_reference_args(p)
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    blas.add_argument(p)
    a = p.parse_args(argv)
    if a.worker:
        if a.worker == "ours":
            row = run_ours(a.checkpoint, a.text, a.warmup_text, a.dtype, a.temp)
        else:
            row = run_kyutai(a.checkpoint, a.text, a.warmup_text, a.temp)
        print(json.dumps(row))
        return 0
    env, blas_header = blas.setup(a.blas)
    if a.checkpoint is None:
        a.checkpoint = make_checkpoint(a.out, a.size)
    a.checkpoint = a.checkpoint.resolve()
    rows = run_sides(__file__, a.ref_python, ["--model", str(a.checkpoint), "--text", a.text, "--warmup-text",
                                              a.warmup_text, "--temp", str(a.temp), "--dtype", a.dtype], env, a.only)
    if rows is None:
        return 1
    print(f"checkpoint {a.checkpoint}; script {a.text!r} after {a.warmup_text!r} untimed; cfg {CFG:g} "
          f"(distilled, as a condition), temp {a.temp:g}; {blas_header}")
    print(f"{'':8} {'1st audio s':>11} {'wall s':>8} {'audio s':>8} {'RTF':>7} {'steps':>6} {'ms/step':>8} "
          f"{'setup s':>8} {'load s':>7} {'peak RSS MB':>12}  {'dtype':<9} mlx")
    for side, r in rows.items():
        first = r["first_audio_s"] if r["first_audio_s"] is not None else float("nan")
        rtf = r["wall_s"] / r["audio_s"] if r["audio_s"] else float("nan")
        print(f"{side:8} {first:11.2f} {r['wall_s']:8.2f} {r['audio_s']:8.2f} {rtf:7.3f} {r['steps']:6d} "
              f"{1000 * r['wall_s'] / max(1, r['steps']):8.1f} {r['setup_s']:8.3f} {r['load_s']:7.1f} "
              f"{r['peak_rss_mb']:12.0f}  {r['dtype'].replace('mlx.core.', ''):<9} {r['mlx']}")
    print("(1st audio and wall include setup: ours = the voice, the conditions and every layer's cross-attention "
          "keys/values (model.speaker); kyutai = the script and the voice only, its conditions and keys/values "
          "are computed in its first step)")
    if len(rows) == 2:
        ours, theirs = rows["ours"], rows["kyutai"]

        def ratio(f) -> str:
            try:
                return f"{f(ours) / f(theirs):.2f}"
            except (TypeError, ZeroDivisionError):
                return "n/a"

        print(f"ours / kyutai: time to first audio {ratio(lambda r: r['first_audio_s'])}, "
              f"wall {ratio(lambda r: r['wall_s'])}, RTF {ratio(lambda r: r['wall_s'] / r['audio_s'])}, "
              f"time per step {ratio(lambda r: r['wall_s'] / r['steps'])}")
        if ours["steps"] != theirs["steps"]:
            print(f"note: the two ran different step counts ({ours['steps']} vs {theirs['steps']}): compare "
                  "the time per step")
    report(a, blas_header, rows, text=a.text, temp=a.temp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
