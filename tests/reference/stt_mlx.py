"""moshi_mlx reference side of the STT fixture (moshi_mlx==0.3.0 on mlx 0.26), after stt_torch.py:
    python stt_mlx.py DIR
Writes DIR/mlx/: model.safetensors (bf16), model.q8.safetensors (bits 8, group 64), model.q4.safetensors
(bits 4, group 32) in Kyutai's MLX layout, as moshi_mlx writes them, WITHOUT the extra heads (the published
kyutai/stt-*-mlx repos have none), a config.json without the extra-head keys, and copies of the Mimi, its
config and the tokenizer. Merges DIR/torch_golden.npz with moshi_mlx's own STT runs into DIR/golden.npz.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from mlx_side import QUANT, ForcedSampler, merge_goldens  # noqa: E402

from moshi_mlx import models  # noqa: E402
from moshi_mlx.models.generate import LmGen  # noqa: E402

HEAD_KEYS = ("extra_heads_num_heads", "extra_heads_dim")


def new_lm(cfg: dict, quant: str | None = None) -> "models.Lm":
    model = models.Lm(models.LmConfig.from_config_dict(cfg))
    model.set_dtype(mx.bfloat16)
    if quant is not None:
        nn.quantize(model, bits=QUANT[quant][0], group_size=QUANT[quant][1])
    return model


def save(model, path: Path) -> None:
    """Every parameter but the extra heads, flattened, as Kyutai's conversion scripts save them."""
    weights = {k: v for k, v in tree_flatten(model.parameters()) if not k.startswith("extra_heads.")}
    mx.save_safetensors(str(path), weights)


def stt_run(model, codes: np.ndarray, forced=None) -> dict[str, np.ndarray]:
    """moshi_mlx's own STT loop: frame t given at step t (seen at step t+1), extra heads when it has them."""
    text_s = ForcedSampler(forced)
    gen = LmGen(model, max_steps=codes.shape[0], text_sampler=text_s, audio_sampler=ForcedSampler(), check=False)
    eot = []
    for frame in codes:
        # LmGen.step returns (text, transformer_out) in 0.3.0; step_with_extra_heads (text, [softmax per head]).
        _, heads = gen.step_with_extra_heads(mx.array(frame[None]))
        if heads:
            eot.append(np.stack([np.array(h.astype(mx.float32)).reshape(-1) for h in heads]))
    out = {"text": np.array(text_s.tokens, np.int32), "text_logits": np.stack(text_s.logits).astype(np.float32)}
    if eot:
        out["eot"] = np.stack(eot).astype(np.float32)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path)
    d = p.parse_args().dir
    cfg = json.loads((d / "config.json").read_text())
    mlx_cfg = {k: v for k, v in cfg.items() if k not in HEAD_KEYS}
    out = d / "mlx"
    out.mkdir(exist_ok=True)
    common.write_json(out / "config.json", mlx_cfg)
    for name in (cfg["mimi_name"], "mimi_config.json", cfg["tokenizer_name"]):
        shutil.copyfile(d / name, out / name)

    # The candle file (extra heads included) read as Kyutai's stt_from_file_mlx.py reads a -candle repo.
    candle = new_lm(cfg)
    candle.load_pytorch_weights(str(d / "model.safetensors"), candle.cfg, strict=True)
    save(candle, out / "model.safetensors")
    for quant in QUANT:
        model = new_lm(mlx_cfg)
        model.load_weights(str(out / "model.safetensors"), strict=True)
        nn.quantize(model, bits=QUANT[quant][0], group_size=QUANT[quant][1])
        save(model, out / f"model.{quant}.safetensors")

    codes = common.load_npz(d / "torch_golden.npz")["codes"]
    golden = {}
    candle.set_dtype(mx.float32)
    for key, value in stt_run(candle, codes).items():
        golden[f"mlx_fp32.{key}"] = value
    bf16 = new_lm(mlx_cfg)
    bf16.load_weights(str(out / "model.safetensors"), strict=True)
    golden["mlx_bf16.text"] = stt_run(bf16, codes)["text"]
    merge_goldens(d, golden)


if __name__ == "__main__":
    main()
