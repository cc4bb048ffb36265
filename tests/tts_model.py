"""A complete tiny random TTS checkpoint folder (LM + Mimi + tokenizer + a voice) laid out as Kyutai's
`kyutai/tts-1.6b-en_fr` (config.json with `tts_config` and `model_id`, conditioners, cross-attention,
demultiplexed text, low-rank depformer tables on a weight-sharing schedule), at tiny sizes, written in
Kyutai's MLX layout. For tests of the speaker and `moshi-mlx-speak`; parity is tests/test_tts_parity.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import FIXTURES
from tiny_model import TOKENIZER_VOCAB, train_tokenizer

MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_NAME = "tokenizer_spm_8k_en_fr_audio.model"
MODEL_ID = {"sig": "tiny0001", "epoch": 7}
VOICE_NAME = "tiny/voice.wav"
VOICE_DIM, VOICE_FRAMES = 24, 10


def tts_config(distilled: bool = True) -> dict:
    n_q = 8
    conditioners = {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": VOICE_DIM}},
        "control": {"type": "lut", "lut": {"n_bins": 1, "dim": 16, "tokenizer": "noop", "possible_values": ["ok"]}},
    }
    fuser_sum = ["control"]
    if distilled:
        conditioners["cfg"] = {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop",
                                                      "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0",
                                                                          "3.5", "4.0"]}}
        fuser_sum = ["cfg", "control"]
    return {
        "dim": 256, "text_card": TOKENIZER_VOCAB, "n_q": n_q, "dep_q": n_q, "card": 2048, "num_heads": 2,
        "num_layers": 2, "hidden_scale": 4.125, "context": 40, "max_period": 10000, "causal": True,
        "layer_scale": None, "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
        "delays": [0, 0] + [2] * (n_q - 1), "depformer_dim": 64, "depformer_dim_feedforward": 192,
        "depformer_num_heads": 2, "depformer_num_layers": 2, "depformer_weights_per_step": True,
        "depformer_weights_per_step_schedule": [0, 1, 2, 2, 3, 3, 3, 3], "depformer_multi_linear": True,
        "depformer_low_rank_embeddings": 32, "depformer_pos_emb": "none", "demux_second_stream": True,
        "cross_attention": True, "conditioners": conditioners,
        "fuser": {"sum": fuser_sum, "cross": ["speaker_wavs"], "cross_attention_pos_emb": True,
                  "cross_attention_pos_emb_scale": 1},
        "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2}, "model_id": MODEL_ID,
        "mimi_name": MIMI_NAME, "tokenizer_name": TOKENIZER_NAME, "moshi_name": "model.safetensors",
    }


def voice_file_name(name: str = VOICE_NAME, model_id: dict = MODEL_ID) -> str:
    return f"{name}.{model_id['sig']}@{model_id['epoch']}.safetensors"


def build_tiny_tts_checkpoint(folder: Path, seed: int = 0, distilled: bool = True) -> Path:
    """Writes the checkpoint into `folder` and a voice file at `folder / voice_file_name()`."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from moshi_mlx.lm import LmConfig
    from moshi_mlx.lm.model import Lm
    from moshi_mlx.lm.weights import to_kyutai_mlx

    folder.mkdir(parents=True, exist_ok=True)
    cfg = tts_config(distilled)
    config = LmConfig.from_dict(cfg)
    mx.random.seed(seed)
    lm = Lm(config)
    # Learnt paddings are zeros at init; random ones make the null conditions differ from zero vectors.
    for module in lm.condition_provider.conditioners.values():
        module.learnt_padding = 0.2 * mx.random.normal(module.learnt_padding.shape)
    w = lm.text_linear.weight
    w[0] = w[0] * 3.0  # NEW_WORD now and then, so that the words go by quickly
    weights = to_kyutai_mlx(dict(tree_flatten(lm.parameters())), config)
    mx.save_safetensors(str(folder / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(FIXTURES / "mimi_tiny" / MIMI_NAME, folder / MIMI_NAME)
    shutil.copy(FIXTURES / "mimi_tiny" / "mimi_config.json", folder / "mimi_config.json")
    train_tokenizer(folder / TOKENIZER_NAME)
    voice = folder / voice_file_name()
    voice.parent.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(voice), {"speaker_wavs": mx.random.normal((1, VOICE_DIM, VOICE_FRAMES))})
    return folder
