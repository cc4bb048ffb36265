"""Validation of what callers hand to the Mimi codec: one-line `MimiInputError`s instead of shape crashes."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .config import MimiConfig
from .errors import MimiInputError


def check_pcm(pcm, cfg: MimiConfig, frames: int | None = None, batch_size: int | None = None) -> mx.array:
    """Validate audio `[B, channels, T]` and return it as an mx.array, same layout and dtype.

    Args:
        pcm: mx.array or numpy array of floats.
        cfg: The codec's config (channels, frame size).
        frames: If given, T must be exactly this many frames (streaming), else any positive multiple.
        batch_size: If given, B must equal it (the streaming state's batch).
    """
    what = "pcm frame" if frames else "pcm"
    frame = cfg.frame_size
    pcm = as_array(pcm, what)
    if pcm.ndim != 3:
        raise MimiInputError(f"{what} must have shape [batch, {cfg.channels}, samples], got {pcm.shape}.")
    if not mx.issubdtype(pcm.dtype, mx.floating):
        raise MimiInputError(f"{what} must be float audio in [-1, 1], got dtype {pcm.dtype}.")
    B, C, T = pcm.shape
    if C != cfg.channels:
        raise MimiInputError(f"{what} must have {cfg.channels} channel(s) on axis 1, got shape {pcm.shape}.")
    if batch_size is not None and B != batch_size:
        raise MimiInputError(f"{what} has batch {B} but the state was made for batch {batch_size}.")
    if frames is not None and T != frames * frame:
        raise MimiInputError(f"{what} must hold exactly {frame} samples, got {T}.")
    if T == 0 or T % frame:
        raise MimiInputError(f"{what} length {T} is not a positive multiple of the frame size {frame}; "
                             f"pad or trim it to {max(1, -(-T // frame)) * frame} samples.")
    if B == 0:
        raise MimiInputError(f"{what} has an empty batch (shape {pcm.shape}).")
    return pcm


def check_codes(codes, cfg: MimiConfig, frames: int | None = None, batch_size: int | None = None,
                check_range: bool = True) -> mx.array:
    """Validate codes `[B, K, F]` (integers, 1 <= K <= n_q, values in 0..bins-1) and return them as int32.

    The range check reads two scalars back from the device (one host sync); `check_range=False` skips it.
    """
    codes = as_array(codes, "codes")
    n_q, bins = cfg.quantizer.n_q, cfg.quantizer.bins
    if codes.ndim != 3:
        raise MimiInputError(f"codes must have shape [batch, codebooks, frames], got {codes.shape}.")
    if not mx.issubdtype(codes.dtype, mx.integer):
        raise MimiInputError(f"codes must be integers, got dtype {codes.dtype}.")
    B, K, F = codes.shape
    if B == 0 or F == 0:
        raise MimiInputError(f"codes must not be empty, got shape {codes.shape}.")
    if not 1 <= K <= n_q:
        raise MimiInputError(f"codes have {K} codebooks on axis 1; this Mimi has 1..{n_q}.")
    if batch_size is not None and B != batch_size:
        raise MimiInputError(f"codes have batch {B} but the state was made for batch {batch_size}.")
    if frames is not None and F != frames:
        raise MimiInputError(f"decode_step takes one frame of codes [batch, codebooks, 1], got {codes.shape}.")
    if check_range:
        lo, hi = mx.min(codes), mx.max(codes)
        mx.eval(lo, hi)
        if lo.item() < 0 or hi.item() >= bins:
            raise MimiInputError(f"codes must be in 0..{bins - 1}, got values in {lo.item()}..{hi.item()}.")
    return codes if codes.dtype == mx.int32 else codes.astype(mx.int32)


def as_array(x, what: str) -> mx.array:
    """`x` as an mx.array (numpy arrays are converted)."""
    if isinstance(x, mx.array):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == np.float64:  # MLX's GPU has no float64: narrow on the host
            x = x.astype(np.float32)
        return mx.array(x)
    raise MimiInputError(f"{what} must be an mx.array or numpy array, got {type(x).__name__}.")


def check_positive_int(value, name: str) -> None:
    """Raise unless `value` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MimiInputError(f"{name} must be a positive integer, got {value!r}.")
