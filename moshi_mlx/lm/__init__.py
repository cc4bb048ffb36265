"""Moshi's LM in MLX: temporal transformer, depth transformer, streaming generation.

    from moshi_mlx.lm import load_lm

    model = load_lm("path/to/moshiko-mlx-q8")      # folder or weights file; quantization read from it
    gen = Generator(model, seed=0)                   # text temp 0.7 / top-k 25, audio 0.8 / 250
    text, moshi_frame = gen.step(user_codes)        # user_codes [B, 8] per 80 ms frame

Checkpoints in Kyutai's MLX (bf16/q8/q4) and PyTorch layouts load alike; see `weights.load_lm`. The
alignment of the streams (delays) is documented in `generate`.
"""

from .config import PRESETS, LmConfig
from .generate import Generator, delayed_inputs
from .model import Lm
from .weights import WeightsError, load_lm

__all__ = ["Generator", "Lm", "LmConfig", "PRESETS", "WeightsError", "delayed_inputs", "load_lm"]
