"""A complete tiny random checkpoint folder (LM + Mimi + tokenizer) laid out as Kyutai's MLX repos.

For tests of everything above the models (engine, offline demo, chat): no reference environment needed.
The LM is random (MLX's default init), the Mimi is the committed tiny fixture, the tokenizer a small
sentencepiece model trained on the spot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import FIXTURES

TOKENIZER_VOCAB = 300


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


def build_tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Writes model.safetensors (bf16, Kyutai MLX layout), config.json, the Mimi file and the tokenizer."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from moshi_mlx.constants import MIMI_FILE, TEXT_TOKENIZER_FILE
    from moshi_mlx.lm import LmConfig
    from moshi_mlx.lm.model import Lm
    from moshi_mlx.lm.weights import to_kyutai_mlx

    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((FIXTURES / "lm_tiny" / "config.json").read_text())
    cfg.update(card=2048, text_card=TOKENIZER_VOCAB)  # the codec's card; the tokenizer's vocabulary
    config = LmConfig.from_dict(cfg)
    mx.random.seed(seed)
    lm = Lm(config)
    weights = to_kyutai_mlx(dict(tree_flatten(lm.parameters())), config)
    mx.save_safetensors(str(folder / "model.safetensors"), {k: v.astype(mx.bfloat16) for k, v in weights.items()})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(FIXTURES / "mimi_tiny" / MIMI_FILE, folder / MIMI_FILE)
    shutil.copy(FIXTURES / "mimi_tiny" / "mimi_config.json", folder / "mimi_config.json")
    train_tokenizer(folder / TEXT_TOKENIZER_FILE)
    return folder
