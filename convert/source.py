"""Finding what to convert: the LM weights, and the config, Mimi and tokenizer files that travel with them.

SRC is a local `.safetensors` file (its folder holds the other files), a local folder, or a Hugging Face hub
repo id (`kyutai/moshiko-pytorch-bf16`; downloads go through huggingface_hub's cache, so a second run is
offline). The search is `moshi_mlx.checkpoint.resolve`'s; conversion prefers the bf16 weights (where
inference picks the smallest) and needs no Mimi or tokenizer (they are copied when present).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moshi_mlx import checkpoint
from moshi_mlx.checkpoint import CONFIG_FILE
from moshi_mlx.constants import LM_FILES

from . import ConvertError

__all__ = ["CONFIG_FILE", "LM_PREFERENCE", "SourceFiles", "read_config", "resolve_source"]

# Conversion starts from full-precision weights; quantized names are looked up only to refuse them clearly.
LM_PREFERENCE = (LM_FILES["bf16"], LM_FILES["q8"], LM_FILES["q4"])


@dataclass(frozen=True)
class SourceFiles:
    """Local paths of the files of one source checkpoint (None: the source has no such file)."""

    lm: Path
    config: Path | None
    mimi: Path | None
    tokenizer: Path | None
    origin: str

    @property
    def folder(self) -> Path:
        return self.lm.parent


def read_config(path: Path) -> dict:
    """A config.json as a dict, or a one-line ConvertError."""
    try:
        return checkpoint.read_config(path)
    except checkpoint.CheckpointError as e:
        raise ConvertError(str(e)) from None


def resolve_source(src: str, revision: str | None = None) -> SourceFiles:
    """Finds (downloading where needed) the files of the checkpoint to convert.

    Raises:
        ConvertError: nothing found, a pickle file, a quantized-only repo, or the hub unreachable with
            nothing cached.
    """
    try:
        f = checkpoint.resolve(src, revision, lm_names=LM_PREFERENCE, need_mimi=False, refuse_quantized=True)
    except checkpoint.CheckpointError as e:
        raise ConvertError(str(e)) from None
    return SourceFiles(f.lm, f.config, f.mimi, f.tokenizer, f.source)
