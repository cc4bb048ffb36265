"""A complete tiny random STT checkpoint folder (LM + Mimi + tokenizer) laid out as Kyutai's STT repos.

For tests of the transcriber and `moshi-mlx-transcribe` (no reference environment needed): the LM is
random with its text head tilted towards PAD and EPAD, so that its greedy text looks like an STT stream
(mostly padding, an EPAD, then a few pieces), the Mimi is the committed tiny fixture, the tokenizer a
small sentencepiece model trained on the spot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import FIXTURES
from tiny_model import TOKENIZER_VOCAB, train_tokenizer

MIMI_NAME = "mimi-pytorch-e351c8d8@125.safetensors"
TOKENIZER_NAME = "tokenizer_en_fr_audio_8000.model"


def stt_config(heads: bool = True) -> dict:
    """Kyutai's STT config.json schema at tiny sizes (a short context, so tests run past it; dim 256 so that
    q8 and q4 groups divide every width)."""
    cfg = {
        "dim": 256, "text_card": TOKENIZER_VOCAB, "existing_text_padding_id": 3, "n_q": 32, "dep_q": 0,
        "card": 2048, "num_heads": 2, "num_layers": 2, "hidden_scale": 4.125, "causal": True,
        "layer_scale": None, "context": 24, "max_period": 100000, "gating": "silu", "norm": "rms_norm_f32",
        "positional_embedding": "rope", "depformer_dim": 1024, "depformer_dim_feedforward": None,
        "depformer_num_heads": 16, "depformer_num_layers": 6, "depformer_context": 32,
        "depformer_max_period": 10000, "depformer_gating": "silu", "depformer_pos_emb": "none",
        "depformer_weights_per_step": True, "depformer_multi_linear": True, "delays": [0] * 33,
        "conditioners": {}, "model_type": "stt", "mimi_name": MIMI_NAME, "tokenizer_name": TOKENIZER_NAME,
        "moshi_name": "model.safetensors",
        "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 1.0},
    }
    if heads:
        cfg.update(extra_heads_num_heads=4, extra_heads_dim=6)
    return cfg


def build_tiny_stt_checkpoint(folder: Path, seed: int = 0, heads: bool = True) -> Path:
    """Writes model.safetensors (bf16, Kyutai's MLX layout), config.json, the Mimi file and the tokenizer."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from moshi_mlx.lm import LmConfig
    from moshi_mlx.lm.model import Lm
    from moshi_mlx.lm.weights import to_kyutai_mlx

    folder.mkdir(parents=True, exist_ok=True)
    cfg = stt_config(heads)
    config = LmConfig.from_dict(cfg)
    mx.random.seed(seed)
    lm = Lm(config)
    w = lm.text_linear.weight
    # Tilt the text head: PAD (3) most of the time, EPAD (0) now and then, some pieces; never the
    # byte-fallback pieces (ids 4-259), whose random mixes are not text.
    w[3] = w[3] * 6.0
    w[0] = w[0] * 4.0
    w[4:260] = 0.0
    weights = to_kyutai_mlx(dict(tree_flatten(lm.parameters())), config)
    mx.save_safetensors(str(folder / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(FIXTURES / "mimi_tiny" / "tokenizer-e351c8d8-checkpoint125.safetensors", folder / MIMI_NAME)
    shutil.copy(FIXTURES / "mimi_tiny" / "mimi_config.json", folder / "mimi_config.json")
    train_tokenizer(folder / TOKENIZER_NAME)
    return folder
