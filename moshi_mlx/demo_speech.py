"""Tiny random speech-to-text and text-to-speech checkpoints, built on the spot (`--demo`, and the tests).

Laid out as Kyutai's repos (`kyutai/stt-1b-en_fr-candle`, `kyutai/tts-1.6b-en_fr` with a voice), with the
same config schema and code paths at tiny widths: an STT with end-of-turn heads and a context short enough
for tests to run past it; a TTS with conditioners, cross-attention, the demultiplexed text stream and
low-rank depformer tables on a weight-sharing schedule. Their weights are random: the transcripts are
gibberish and the speech is noise. The text heads are tilted so that the token streams look like the real
models' (mostly padding, now and then a word).
"""

from __future__ import annotations

import json
from pathlib import Path

from .demo import MIMI_BINS, TINY_MIMI_CONFIG, TOKENIZER_VOCAB, train_tokenizer, write_random_mimi

STT_MIMI_NAME = "mimi-pytorch-e351c8d8@125.safetensors"
STT_TOKENIZER_NAME = "tokenizer_en_fr_audio_8000.model"
TTS_MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TTS_TOKENIZER_NAME = "tokenizer_spm_8k_en_fr_audio.model"
TTS_MODEL_ID = {"sig": "tiny0001", "epoch": 7}
TTS_VOICE_NAME = "tiny/voice.wav"
VOICE_DIM, VOICE_FRAMES = 24, 10
_BYTE_PIECES = slice(4, 260)  # the tokenizer's byte-fallback pieces: random mixes of them are not text


def stt_config(heads: bool = True) -> dict:
    """Kyutai's STT config.json schema at tiny sizes (context 24; dim 256 so that q8 and q4 groups divide
    every width)."""
    cfg = {
        "dim": 256, "text_card": TOKENIZER_VOCAB, "existing_text_padding_id": 3, "n_q": 32, "dep_q": 0,
        "card": MIMI_BINS, "num_heads": 2, "num_layers": 2, "hidden_scale": 4.125, "causal": True,
        "layer_scale": None, "context": 24, "max_period": 100000, "gating": "silu", "norm": "rms_norm_f32",
        "positional_embedding": "rope", "depformer_dim": 1024, "depformer_dim_feedforward": None,
        "depformer_num_heads": 16, "depformer_num_layers": 6, "depformer_context": 32,
        "depformer_max_period": 10000, "depformer_gating": "silu", "depformer_pos_emb": "none",
        "depformer_weights_per_step": True, "depformer_multi_linear": True, "delays": [0] * 33,
        "conditioners": {}, "model_type": "stt", "mimi_name": STT_MIMI_NAME, "tokenizer_name": STT_TOKENIZER_NAME,
        "moshi_name": "model.safetensors",
        "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 1.0},
    }
    if heads:
        cfg.update(extra_heads_num_heads=4, extra_heads_dim=6)
    return cfg


def tts_config(distilled: bool = True) -> dict:
    """Kyutai's TTS config.json schema at tiny sizes (8 codebooks; widths that groups of 32 divide)."""
    n_q = 8
    conditioners = {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": VOICE_DIM}},
        "control": {"type": "lut", "lut": {"n_bins": 1, "dim": 16, "tokenizer": "noop", "possible_values": ["ok"]}},
    }
    fuser_sum = ["control"]
    if distilled:
        values = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
        conditioners["cfg"] = {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop",
                                                      "possible_values": values}}
        fuser_sum = ["cfg", "control"]
    return {
        "dim": 256, "text_card": TOKENIZER_VOCAB, "n_q": n_q, "dep_q": n_q, "card": MIMI_BINS, "num_heads": 2,
        "num_layers": 2, "hidden_scale": 4.125, "context": 40, "max_period": 10000, "causal": True,
        "layer_scale": None, "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
        "delays": [0, 0] + [2] * (n_q - 1), "depformer_dim": 64, "depformer_dim_feedforward": 192,
        "depformer_num_heads": 2, "depformer_num_layers": 2, "depformer_weights_per_step": True,
        "depformer_weights_per_step_schedule": [0, 1, 2, 2, 3, 3, 3, 3], "depformer_multi_linear": True,
        "depformer_low_rank_embeddings": 32, "depformer_pos_emb": "none", "demux_second_stream": True,
        "cross_attention": True, "conditioners": conditioners,
        "fuser": {"sum": fuser_sum, "cross": ["speaker_wavs"], "cross_attention_pos_emb": True,
                  "cross_attention_pos_emb_scale": 1},
        "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2}, "model_id": TTS_MODEL_ID,
        "mimi_name": TTS_MIMI_NAME, "tokenizer_name": TTS_TOKENIZER_NAME, "moshi_name": "model.safetensors",
    }


def voice_file_name(name: str = TTS_VOICE_NAME, model_id: dict = TTS_MODEL_ID) -> str:
    """A voice's file name for a model, as `kyutai/tts-voices` names them."""
    return f"{name}.{model_id['sig']}@{model_id['epoch']}.safetensors"


def _write(folder: Path, cfg: dict, lm, mimi_name: str, tokenizer_name: str, seed: int) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from .lm.weights import to_kyutai_mlx

    weights = to_kyutai_mlx(dict(tree_flatten(lm.parameters())), lm.config)
    mx.save_safetensors(str(folder / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    write_random_mimi(folder / mimi_name, TINY_MIMI_CONFIG, seed)
    train_tokenizer(folder / tokenizer_name)


def build_stt_checkpoint(folder: Path, seed: int = 0, heads: bool = True) -> Path:
    """A tiny random STT folder (model.safetensors in Kyutai's MLX layout, config.json, Mimi, tokenizer)."""
    import mlx.core as mx

    from .lm import LmConfig
    from .lm.model import Lm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = stt_config(heads)
    mx.random.seed(seed)
    lm = Lm(LmConfig.from_dict(cfg))
    w = lm.text_linear.weight
    w[3] = w[3] * 6.0  # PAD most of the time
    w[0] = w[0] * 4.0  # EPAD now and then
    w[_BYTE_PIECES] = 0.0
    _write(folder, cfg, lm, STT_MIMI_NAME, STT_TOKENIZER_NAME, seed)
    return folder


def build_tts_checkpoint(folder: Path, seed: int = 0, distilled: bool = True) -> Path:
    """A tiny random TTS folder, plus a voice at `folder / voice_file_name()`."""
    import mlx.core as mx

    from .lm import LmConfig
    from .lm.model import Lm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tts_config(distilled)
    mx.random.seed(seed)
    lm = Lm(LmConfig.from_dict(cfg))
    # Learnt paddings are zeros at init; random ones make the null conditions differ from zero vectors.
    for module in lm.condition_provider.conditioners.values():
        module.learnt_padding = 0.2 * mx.random.normal(module.learnt_padding.shape)
    w = lm.text_linear.weight
    w[0] = w[0] * 3.0  # NEW_WORD now and then, so that the words go by quickly
    _write(folder, cfg, lm, TTS_MIMI_NAME, TTS_TOKENIZER_NAME, seed)
    voice = folder / voice_file_name()
    voice.parent.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(voice), {"speaker_wavs": mx.random.normal((1, VOICE_DIM, VOICE_FRAMES))},
                        metadata={"sig": TTS_MODEL_ID["sig"], "epoch": str(TTS_MODEL_ID["epoch"])})
    return folder
