"""moshi_mlx: Kyutai's Moshi full-duplex speech-text model in MLX.

The heavy rooms (`moshi_mlx.mimi`, `moshi_mlx.lm`) import lazily, so that `import moshi_mlx` and the
command-line tools start fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_mimi": "moshi_mlx.mimi",
    "Mimi": "moshi_mlx.mimi",
    "MimiConfig": "moshi_mlx.mimi",
    "load_lm": "moshi_mlx.lm",
    "LmConfig": "moshi_mlx.lm",
    "load": "moshi_mlx.loading",
    "LoadError": "moshi_mlx.loading",
    "Engine": "moshi_mlx.engine",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moshi_mlx' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
