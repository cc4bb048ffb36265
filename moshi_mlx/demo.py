"""A complete tiny random checkpoint (LM, Mimi, tokenizer), built on the spot in under a second.

It lets a newcomer see the tools run without downloading 5-8 GB (`moshi-mlx-offline --demo`), and gives
tests a model folder laid out as Kyutai's MLX repos. Its weights are random: it speaks noise and writes
gibberish, with the shapes, files and code paths of the real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .constants import MIMI_FILE, TEXT_TOKENIZER_FILE

TOKENIZER_VOCAB = 300
MIMI_BINS = 2048  # the LM's audio card must equal the codec's codebook size
# A one-layer LM in Kyutai's config schema: Moshi's 8+8 codebooks and delays, tiny widths.
TINY_LM_CONFIG = {
    "card": MIMI_BINS, "text_card": TOKENIZER_VOCAB, "n_q": 16, "dep_q": 8,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    "dim": 256, "num_heads": 2, "num_layers": 1, "hidden_scale": 4.125, "causal": True, "context": 3000,
    "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope", "max_period": 10000,
    "layer_scale": None, "existing_text_padding_id": 3,
    "depformer_dim": 64, "depformer_dim_feedforward": 192, "depformer_num_heads": 2, "depformer_num_layers": 2,
    "depformer_context": 8, "depformer_gating": "silu", "depformer_layer_scale": None, "depformer_max_period": 10000,
    "depformer_multi_linear": True, "depformer_pos_emb": "none", "depformer_weights_per_step": True,
}
# Mimi's structure (strides 8*6*5*4 at 24 kHz = 12.5 Hz, split RVQ, streaming transformers), tiny widths.
TINY_MIMI_CONFIG = {
    "channels": 1, "sample_rate": 24000, "frame_rate": 12.5,
    "quantizer": {"bins": MIMI_BINS, "dimension": 8, "input_dimension": 32, "n_q": 32, "output_dimension": 32},
    "seanet": {"activation": "ELU", "causal": True, "channels": 1, "compress": 2, "dilation_base": 2,
               "dimension": 32, "disable_norm_outer_blocks": 0, "kernel_size": 7, "last_kernel_size": 3,
               "n_filters": 4, "n_residual_layers": 1, "norm": "none", "pad_mode": "constant",
               "ratios": [8, 6, 5, 4], "residual_kernel_size": 3, "true_skip": True},
    "transformer": {"causal": True, "context": 20, "conv_layout": True, "d_model": 32, "dim_feedforward": 64,
                    "gating": "none", "input_dimension": 32, "layer_scale": 0.01, "max_period": 10000,
                    "norm": "layer_norm", "num_heads": 4, "num_layers": 2, "output_dimensions": [32],
                    "positional_embedding": "rope"},
}


def train_tokenizer(path: Path) -> Path:
    """A real sentencepiece model with byte fallback; ids 0-3 are specials as in Moshi's (EPAD 0, PAD 3)."""
    import sentencepiece as spm

    corpus = path.parent / (path.stem + ".corpus.txt")
    words = "hello world moshi talks while you speak the quick brown fox jumps over lazy dogs".split()
    corpus.write_text("\n".join(" ".join(words[i:] + words[:i]) for i in range(len(words))) * 20)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(path.with_suffix("")),
                                   vocab_size=TOKENIZER_VOCAB, byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2)
    corpus.unlink()
    path.with_suffix(".vocab").unlink()
    return path


def write_random_lm(folder: Path, config: dict, seed: int = 0) -> Path:
    """model.safetensors (bf16, Kyutai's MLX layout, MLX's default init) and config.json in `folder`."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from .lm import LmConfig
    from .lm.model import Lm
    from .lm.weights import to_kyutai_mlx

    folder.mkdir(parents=True, exist_ok=True)
    cfg = LmConfig.from_dict(config)
    mx.random.seed(seed)
    lm = Lm(cfg)
    weights = to_kyutai_mlx(dict(tree_flatten(lm.parameters())), cfg)
    path = folder / "model.safetensors"
    mx.save_safetensors(str(path), {k: v.astype(mx.bfloat16) for k, v in weights.items()})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return path


def random_mimi_weights(model, seed: int) -> None:
    """Random weights with unit-scale activations through the stack (zero-initialised codebooks would map
    every frame to code 0): LayerScale 0.01, norms 1, biases 0, matrices scaled by their fan-in."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from .mimi.conv import StreamingConvTranspose1d

    transposed = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, StreamingConvTranspose1d)}
    rng = np.random.default_rng(seed)
    flat = []
    for name, p in tree_flatten(model.parameters()):
        if p.ndim == 1:
            level = 0.01 if "layer_scale" in name else 1.0 if name.endswith(("norm1.weight", "norm2.weight")) else 0.0
            value = np.full(p.shape, level)
        else:
            if name in transposed:  # [C_in, K, C_out]: each output sums C_in inputs over K / stride steps
                fan_in = 2 * p.shape[0]
            elif p.ndim == 3:  # conv [C_out, K, C_in]
                fan_in = p.shape[1] * p.shape[2]
            else:  # linear [out, in], codebook [bins, dim], depthwise upsampler [K, C]
                fan_in = 1 if "upsample" in name else p.shape[1]
            value = rng.standard_normal(p.shape) / np.sqrt(fan_in)
        flat.append((name, mx.array(value.astype(np.float32))))
    model.update(tree_unflatten(flat))


def write_random_mimi(path: Path, config: dict | None = None, seed: int = 0) -> Path:
    """A random Mimi in Kyutai's PyTorch layout at `path` (+ mimi_config.json beside it unless published)."""
    import mlx.core as mx

    from .mimi import Mimi, MimiConfig
    from .mimi.weights import CONFIG_FILE, pytorch_state_dict

    model = Mimi(MimiConfig.published() if config is None else MimiConfig.from_dict(config))
    random_mimi_weights(model, seed)
    mx.save_safetensors(str(path), pytorch_state_dict(model))
    if config is not None:
        (path.parent / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return path


def build_demo_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A tiny random checkpoint folder: model.safetensors, config.json, the Mimi file with its
    mimi_config.json, and the text tokenizer. Returns `folder`."""
    folder = Path(folder)
    write_random_lm(folder, TINY_LM_CONFIG, seed)
    write_random_mimi(folder / MIMI_FILE, TINY_MIMI_CONFIG, seed)
    train_tokenizer(folder / TEXT_TOKENIZER_FILE)
    return folder
