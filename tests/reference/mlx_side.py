"""moshi_mlx reference side (moshi_mlx==0.3.0 on mlx 0.26): Kyutai's MLX layouts and goldens.

Run with the MLX reference venv's python (tests/reference/build_envs.sh), after torch_side.py:
    python mlx_side.py mimi DIR     # reads DIR/<mimi file>, mimi_config.json, torch_golden.npz
    python mlx_side.py lm DIR       # reads DIR/model.safetensors, config.json, torch_golden.npz;
                                    # writes DIR/mlx/model{,.q8,.q4}.safetensors
Both merge the PyTorch goldens with theirs into DIR/golden.npz.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from moshi_mlx import models  # noqa: E402
from moshi_mlx.models.generate import LmGen  # noqa: E402
from moshi_mlx.modules import SeanetConfig, TransformerConfig  # noqa: E402

# Kyutai's quantize_mlx.py: nn.quantize(model, bits, group_size) on the bf16 model, every Linear and
# Embedding; their repos ship q8 with group 64 and q4 with group 32.
QUANT = {"q8": (8, 64), "q4": (4, 32)}
LM_FILES = {"bf16": "model.safetensors", "q8": "model.q8.safetensors", "q4": "model.q4.safetensors"}


# ---------------------------------------------------------------------------------------------- Mimi


def mlx_mimi_config(cfg: dict, num_codebooks: int):
    s, t, q = cfg["seanet"], cfg["transformer"], cfg["quantizer"]
    seanet = SeanetConfig(
        dimension=s["dimension"], channels=s["channels"], causal=s["causal"], nfilters=s["n_filters"],
        nresidual_layers=s["n_residual_layers"], ratios=s["ratios"], ksize=s["kernel_size"],
        residual_ksize=s["residual_kernel_size"], last_ksize=s["last_kernel_size"],
        dilation_base=s["dilation_base"], pad_mode=s["pad_mode"], true_skip=s["true_skip"],
        compress=s["compress"])
    transformer = TransformerConfig(
        d_model=t["d_model"], num_heads=t["num_heads"], num_layers=t["num_layers"], causal=t["causal"],
        norm_first=True, bias_ff=False, bias_attn=False, layer_scale=t["layer_scale"],
        positional_embedding=t["positional_embedding"], use_conv_bias=True, gating=False,
        norm=t["norm"], context=t["context"], max_period=t["max_period"], max_seq_len=8192, kv_repeat=1,
        dim_feedforward=t["dim_feedforward"], conv_layout=True, use_conv_block=False,
        cross_attention=False, conv_kernel_size=3)
    return models.mimi.MimiConfig(
        channels=cfg["channels"], sample_rate=cfg["sample_rate"], frame_rate=cfg["frame_rate"],
        renormalize=True, seanet=seanet, transformer=transformer, quantizer_nq=num_codebooks,
        quantizer_bins=q["bins"], quantizer_dim=q["dimension"])


def cmd_mimi(d: Path) -> None:
    import json
    cfg = json.loads((d / "mimi_config.json").read_text())
    golden = common.load_npz(d / "torch_golden.npz")
    pcm = golden["pcm"]
    frames = pcm.shape[-1] // common.FRAME
    out = {}
    # At the published size moshi_mlx's MLX Mimi takes minutes on a CPU: the full-size run records
    # rustymimi's codes only (PyTorch is the oracle); the tiny fixture covers moshi_mlx's Mimi.
    published = cfg["seanet"]["n_filters"] == 64
    if not published:
        # moshi_mlx loads the 32-codebook file only into a 32-codebook model (strict); RVQ is sequential, so
        # the first K codes of a 32-codebook encode are the K-codebook codes, and decode reads K layers.
        mimi = models.mimi.Mimi(mlx_mimi_config(cfg, 32))
        mimi.load_pytorch_weights(str(d / common.MIMI_FILE), strict=True)
        codes = []
        for i in range(frames):
            c = mimi.encode_step(mx.array(pcm[:, :, i * common.FRAME:(i + 1) * common.FRAME]))
            codes.append(np.array(c))
        codes = np.concatenate(codes, axis=-1).astype(np.int32)
        for k in (8, 32):
            mimi.reset_all()
            audio = [np.array(mimi.decode_step(mx.array(codes[:, :k, i:i + 1]))) for i in range(frames)]
            out[f"mlx_codes_{k}"] = codes[:, :k]
            out[f"mlx_decoded_{k}"] = np.concatenate(audio, axis=-1).astype(np.float32)
    try:
        import rustymimi  # published size only: its config is fixed
        if published:
            for k in (8, 32):
                tok = rustymimi.StreamTokenizer(str(d / common.MIMI_FILE), num_codebooks=k)
                out[f"rusty_codes_{k}"] = _rusty_encode(tok, pcm, frames)
            tok = rustymimi.StreamTokenizer(str(d / common.MIMI_FILE), num_codebooks=8)
            out["rusty_decoded_8"] = _rusty_decode(tok, golden["codes_8"])
    except ImportError:
        pass
    merge_goldens(d, out)


def _poll(get):
    import time
    while True:
        value = get()
        if value is not None:
            return value
        time.sleep(0.001)


def _rusty_decode(tok, codes: np.ndarray) -> np.ndarray:
    """rustymimi's streaming decode of PyTorch's codes [1, K, F] (it takes one frame as uint32 [1, K])."""
    audio = []
    for i in range(codes.shape[-1]):
        tok.decode(codes[:, :, i].astype(np.uint32))
        audio.append(_poll(tok.get_decoded))
    return np.concatenate(audio).astype(np.float32)[None, None]


def _rusty_encode(tok, pcm: np.ndarray, frames: int) -> np.ndarray:
    codes = []
    for i in range(frames):
        tok.encode(pcm[0, 0, i * common.FRAME:(i + 1) * common.FRAME].copy())
        codes.append(_poll(tok.get_encoded))
    return np.stack(codes, axis=-1).reshape(1, -1, frames).astype(np.int32)


# ------------------------------------------------------------------------------------------------ LM


def load_lm(cfg_dict: dict, path: Path, quant: str | None, dtype) -> "models.Lm":
    """As Kyutai's local.py loads a published file: build, quantize the structure if needed, load strictly."""
    model = models.Lm(models.LmConfig.from_config_dict(cfg_dict))
    model.set_dtype(mx.bfloat16)
    if quant is not None:
        bits, group = QUANT[quant]
        nn.quantize(model, bits=bits, group_size=group)
    model.load_weights(str(path), strict=True)
    if dtype != mx.bfloat16:
        model.set_dtype(dtype)  # casts floats only: packed quantized weights stay as they are
    return model


class ForcedSampler:
    """A moshi_mlx Sampler stand-in: greedy or forced tokens, logits recorded per call."""

    def __init__(self, forced=None):
        self.forced = forced
        self.logits: list[np.ndarray] = []
        self.tokens: list[int] = []

    def __call__(self, logits: mx.array):
        row = np.array(logits.astype(mx.float32)).reshape(-1)
        self.logits.append(row)
        tok = int(row.argmax()) if self.forced is None else int(self.forced[len(self.logits) - 1])
        self.tokens.append(tok)
        return mx.full(logits.shape[:-1], tok, dtype=mx.int32), None


def lm_run(model, codes: np.ndarray, forced=None) -> dict[str, np.ndarray]:
    steps = codes.shape[0]
    dep_q = model.cfg.depformer.num_slices
    text_s = ForcedSampler(None if forced is None else forced[0])
    audio_s = ForcedSampler(None if forced is None else forced[1].reshape(-1))
    for c in model.transformer_cache:
        c.reset()
    gen = LmGen(model, max_steps=steps + 4, text_sampler=text_s, audio_sampler=audio_s, check=False)
    for t in range(steps):
        gen.step(mx.array(codes[t][None]))
    return {
        "text": np.array(text_s.tokens, dtype=np.int32),
        "audio": np.array(audio_s.tokens, dtype=np.int32).reshape(steps, dep_q),
        "text_logits": np.stack(text_s.logits).astype(np.float32),
        "audio_logits": np.stack(audio_s.logits).reshape(steps, dep_q, -1).astype(np.float32),
    }


def cmd_lm(d: Path) -> None:
    import json
    cfg = json.loads((d / "config.json").read_text())
    tg = common.load_npz(d / "torch_golden.npz")
    codes = tg["user_codes"]
    forced = (tg["torch_fp32.text"], tg["torch_fp32.audio"])
    mlx_dir = d / "mlx"
    mlx_dir.mkdir(exist_ok=True)
    # The bf16 file as Kyutai's import script writes it: the PyTorch file remapped, then saved.
    model = models.Lm(models.LmConfig.from_config_dict(cfg))
    model.set_dtype(mx.bfloat16)
    model.load_pytorch_weights(str(d / "model.safetensors"), model.cfg, strict=True)
    model.save_weights(str(mlx_dir / LM_FILES["bf16"]))
    for quant, (bits, group) in QUANT.items():
        m = load_lm(cfg, mlx_dir / LM_FILES["bf16"], None, mx.bfloat16)
        nn.quantize(m, bits=bits, group_size=group)
        m.save_weights(str(mlx_dir / LM_FILES[quant]))

    out = {}
    runs = [("mlx_fp32", None, mx.float32), ("mlx_bf16", None, mx.bfloat16),
            ("mlx_q8", "q8", mx.bfloat16), ("mlx_q4", "q4", mx.bfloat16),
            ("mlx_q8_f32", "q8", mx.float32), ("mlx_q4_f32", "q4", mx.float32)]
    if "torch_bf16.text" not in tg:
        # A light reference run (beyond the committed fixture): the files in every layout, but only the
        # fp32 run that checks the two references agree. MLX's quantized CPU kernels are slow.
        runs = runs[:1]
    for name, quant, dtype in runs:
        path = mlx_dir / LM_FILES[quant or "bf16"]
        if not name.endswith("_f32"):
            free = lm_run(load_lm(cfg, path, quant, dtype), codes)
            out[f"{name}.text"], out[f"{name}.audio"] = free["text"], free["audio"]
        tf = lm_run(load_lm(cfg, path, quant, dtype), codes, forced=forced)
        out[f"tf.{name}.text_logits"] = tf["text_logits"].astype(np.float16)
        out[f"tf.{name}.audio_logits"] = tf["audio_logits"].astype(np.float16)
    if "ctx.context" in tg:
        short = dict(cfg, context=int(tg["ctx.context"].reshape(-1)[0]))
        run = lm_run(load_lm(short, mlx_dir / LM_FILES["bf16"], None, mx.float32), codes)
        out["ctx.mlx_fp32.text"], out["ctx.mlx_fp32.audio"] = run["text"], run["audio"]
    merge_goldens(d, out)


def merge_goldens(d: Path, mlx_part: dict[str, np.ndarray]) -> None:
    """golden.npz = the PyTorch side's goldens + ours; the partial file goes."""
    common.save_npz(d / "golden.npz", common.load_npz(d / "torch_golden.npz") | mlx_part)
    (d / "torch_golden.npz").unlink()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("what", choices=["mimi", "lm"])
    p.add_argument("dir", type=Path)
    a = p.parse_args()
    (cmd_mimi if a.what == "mimi" else cmd_lm)(a.dir)


if __name__ == "__main__":
    main()
