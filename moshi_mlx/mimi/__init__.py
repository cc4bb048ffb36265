"""Mimi, Kyutai's streaming neural audio codec, in pure MLX.

    from moshi_mlx.mimi import load_mimi
    mimi = load_mimi("tokenizer-e351c8d8-checkpoint125.safetensors")
    codes = mimi.encode(pcm)                    # [B, 1, T] float -> [B, 8, T // 1920] int32
    pcm = mimi.decode(codes)

    enc, dec = mimi.make_encode_state(), mimi.make_decode_state()
    frame_codes = mimi.encode_step(frame, enc)  # [B, 1, 1920] -> [B, 8, 1]
    frame_pcm = mimi.decode_step(frame_codes, dec)
"""

from .codec import DecodeState, EncodeState, Mimi
from .config import MimiConfig, QuantizerConfig, SeanetConfig, TransformerConfig
from .errors import MimiConfigError, MimiError, MimiFileNotFoundError, MimiInputError, MimiLoadError
from .weights import load_mimi

__all__ = [
    "DecodeState",
    "EncodeState",
    "Mimi",
    "MimiConfig",
    "MimiConfigError",
    "MimiError",
    "MimiFileNotFoundError",
    "MimiInputError",
    "MimiLoadError",
    "QuantizerConfig",
    "SeanetConfig",
    "TransformerConfig",
    "load_mimi",
]
