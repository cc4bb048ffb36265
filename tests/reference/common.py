"""Shared by both reference sides (PyTorch venv and moshi_mlx venv): configs, inputs, deterministic files.

Pure numpy and the standard library, so that it imports in either reference environment.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from pathlib import Path

import numpy as np

FRAME = 1920
SAMPLE_RATE = 24_000
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"

# The published Mimi, in Kyutai's schema (moshi.models.loaders._mimi_config).
MIMI_FULL = {
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1, "dimension": 512, "causal": True, "n_filters": 64, "n_residual_layers": 1,
        "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
        "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
        "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True,
    },
    "quantizer": {"dimension": 256, "n_q": 32, "bins": 2048, "input_dimension": 512, "output_dimension": 512},
    "transformer": {
        "d_model": 512, "num_heads": 8, "num_layers": 8, "causal": True, "layer_scale": 0.01, "context": 250,
        "conv_layout": True, "max_period": 10000, "gating": "none", "norm": "layer_norm",
        "positional_embedding": "rope", "dim_feedforward": 2048, "input_dimension": 512,
        "output_dimensions": [512],
    },
}


def mimi_config(size: str) -> dict:
    """`full` is the published Mimi; `tiny` keeps every key and rank but shrinks the widths.

    The tiny transformer context (20 steps at 25 Hz = 10 frames) is far shorter than the fixture clip,
    so the sliding window is exercised.
    """
    cfg = copy.deepcopy(MIMI_FULL)
    if size == "tiny":
        cfg["seanet"].update(n_filters=4, dimension=32)
        cfg["quantizer"].update(dimension=8, input_dimension=32, output_dimension=32)
        cfg["transformer"].update(d_model=32, num_heads=4, num_layers=2, dim_feedforward=64, context=20,
                                  input_dimension=32, output_dimensions=[32])
    elif size != "full":
        raise ValueError(size)
    return cfg


# The published Moshi 7B LM, in Kyutai's schema (moshi.models.loaders._lm_kwargs).
LM_7B = {
    "dim": 4096, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8, "card": 2048,
    "num_heads": 32, "num_layers": 32, "hidden_scale": 4.125, "causal": True, "layer_scale": None,
    "context": 3000, "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 1024, "depformer_dim_feedforward": 4224,
    "depformer_num_heads": 16, "depformer_num_layers": 6, "depformer_layer_scale": None,
    "depformer_multi_linear": True, "depformer_context": 8, "depformer_max_period": 10000,
    "depformer_gating": "silu", "depformer_pos_emb": "none", "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}


def lm_config(size: str) -> dict:
    """`tiny` for committed fixtures, `mid` (dim 1024, 8 layers) for test-time and bench, `7b` published.

    Widths stay multiples of 64 so that q8 (group 64) and q4 (group 32) apply to every layer.
    """
    cfg = copy.deepcopy(LM_7B)
    if size == "tiny":
        # moshi_mlx sizes the temporal SwiGLU as 11 * dim / 4 and its nn.quantize needs every input width
        # to divide by the group (64 for q8): dim must be a multiple of 256. One temporal layer keeps the
        # committed files small; the mid-size run (generated at test time) has eight.
        cfg.update(dim=256, text_card=256, card=128, num_heads=2, num_layers=1, depformer_dim=64,
                   depformer_dim_feedforward=192, depformer_num_heads=2, depformer_num_layers=2)
    elif size == "mid":
        cfg.update(dim=1024, text_card=4000, num_heads=8, num_layers=8, depformer_dim=512,
                   depformer_dim_feedforward=int(4.125 * 512), depformer_num_heads=8, depformer_num_layers=2)
    elif size != "7b":
        raise ValueError(size)
    return cfg


LM_STEPS = {"tiny": 64, "mid": 24, "7b": 8}
LM_SHORT_CONTEXT = 16  # the short-context run: far shorter than LM_STEPS["tiny"]


def test_waveform(num_frames: int, seed: int) -> np.ndarray:
    """Chirp + tones + noise bursts, [1, 1, num_frames * 1920] float32, peak ~0.8."""
    rng = np.random.default_rng(seed)
    n = num_frames * FRAME
    t = np.arange(n) / SAMPLE_RATE
    dur = n / SAMPLE_RATE
    chirp = np.sin(2 * np.pi * (80 * t + (4000 - 80) / (2 * dur) * t**2))
    tones = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(rng.uniform(100, 3000, 4), rng.uniform(0, 6, 4)))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)
    noise = rng.standard_normal(n) * (np.sin(2 * np.pi * 0.7 * t) > 0.3)
    x = 0.35 * chirp + 0.08 * tones * env + 0.15 * noise
    x = 0.8 * x / np.abs(x).max()
    return x.astype(np.float32)[None, None]


def user_codes(steps: int, card: int, seed: int) -> np.ndarray:
    """Seeded user codes [steps, 8]: slowly changing, like real speech codes, so greedy runs vary."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, card, size=(steps, 8))
    hold = rng.random((steps, 8)) < 0.3
    for t in range(1, steps):
        codes[t, hold[t]] = codes[t - 1, hold[t]]
    return codes.astype(np.int32)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but byte-for-byte reproducible (fixed zip timestamps, sorted keys)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
