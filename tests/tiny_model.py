"""A complete tiny random checkpoint folder (LM + Mimi + tokenizer) laid out as Kyutai's MLX repos.

For tests of everything above the models (engine, offline demo, chat): no reference environment needed.
The LM and the tokenizer come from the library's demo builder (moshi_mlx/demo.py); the Mimi is the
committed tiny fixture (the reference's weights, so that the codec behaves as a trained one would).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import FIXTURES

from moshi_mlx.demo import TOKENIZER_VOCAB, MIMI_BINS, train_tokenizer, write_random_lm

__all__ = ["TOKENIZER_VOCAB", "build_tiny_checkpoint", "train_tokenizer"]


def build_tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Writes model.safetensors (bf16, Kyutai MLX layout), config.json, the Mimi file and the tokenizer."""
    from moshi_mlx.constants import MIMI_FILE, TEXT_TOKENIZER_FILE

    cfg = json.loads((FIXTURES / "lm_tiny" / "config.json").read_text())
    cfg.update(card=MIMI_BINS, text_card=TOKENIZER_VOCAB)  # the codec's card; the tokenizer's vocabulary
    write_random_lm(folder, cfg, seed)
    shutil.copy(FIXTURES / "mimi_tiny" / MIMI_FILE, folder / MIMI_FILE)
    shutil.copy(FIXTURES / "mimi_tiny" / "mimi_config.json", folder / "mimi_config.json")
    train_tokenizer(folder / TEXT_TOKENIZER_FILE)
    return folder
