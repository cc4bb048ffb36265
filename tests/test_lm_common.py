"""Shared helpers of the LM tests (no tests here): fixture access, a tiny random model, a step runner."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx.lm import Generator, Lm, LmConfig

FIXTURE = Path(__file__).parent / "fixtures" / "lm_tiny"

TINY = {
    "dim": 64, "text_card": 48, "n_q": 16, "dep_q": 8, "card": 40, "num_heads": 4, "num_layers": 2,
    "hidden_scale": 4.125, "context": 3000, "max_period": 10000,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    "depformer_dim": 32, "depformer_dim_feedforward": 132, "depformer_num_heads": 2, "depformer_num_layers": 2,
    "depformer_weights_per_step": True, "depformer_multi_linear": True, "depformer_pos_emb": "none",
}


def fixture_dir() -> Path:
    """The lm_tiny fixture folder, or skip the test."""
    if not (FIXTURE / "golden.npz").is_file():
        pytest.skip(f"LM fixtures absent ({FIXTURE}); run tests/reference/regenerate.sh")
    return FIXTURE


def golden() -> dict[str, np.ndarray]:
    with np.load(fixture_dir() / "golden.npz") as data:
        return {k: data[k] for k in data.files}


def tiny_model(seed: int = 0, **overrides) -> Lm:
    """A random float32 model of the TINY config (weights scaled to keep activations tame)."""
    mx.random.seed(seed)
    model = Lm(LmConfig.from_dict(dict(TINY, **overrides)))
    model.emb.weight = model.emb.weight * 0.3  # 17 unit-variance embeddings are summed per step
    mx.eval(model.parameters())
    return model


def run_steps(model: Lm, user: np.ndarray, *, forced: tuple[np.ndarray, np.ndarray] | None = None,
              batch_size: int = 1, **gen_kwargs) -> dict[str, np.ndarray | list]:
    """Runs `len(user)` steps (user `[T, B, user_q]` or `[T, user_q]`), greedy unless told otherwise.

    `forced` = (text `[T]`, audio `[T, dep_q]`) teacher-forces every step (batch 1).
    """
    gen_kwargs = {"text_temp": 0.0, "audio_temp": 0.0, "seed": 0, **gen_kwargs}
    gen = Generator(model, batch_size=batch_size, **gen_kwargs)
    texts, frames, text_logits, audio_logits = [], [], [], []
    for t in range(len(user)):
        codes = user[t] if user.ndim == 3 else user[t][None]
        force = {} if forced is None else {"text": forced[0][t:t + 1], "audio": forced[1][t:t + 1]}
        text, frame, (tl, al) = gen.step(codes, return_logits=True, **force)
        texts.append(text)
        frames.append(frame)
        text_logits.append(tl)
        audio_logits.append(al)
    return {"text": np.stack(texts, axis=1), "frames": frames,
            "text_logits": np.stack(text_logits, axis=1), "audio_logits": np.stack(audio_logits, axis=1)}


def frames_from_raw(config: LmConfig, raw_audio: np.ndarray) -> list[np.ndarray | None]:
    """Moshi's frame out after each step, from the raw per-step codebooks `[T, dep_q]` (the delays applied)."""
    delays = np.array(config.audio_delays)
    top = delays.max()
    frames: list[np.ndarray | None] = []
    for t in range(len(raw_audio)):
        f = t - top
        frames.append(None if f < 0 else raw_audio[f + delays, np.arange(config.dep_q)])
    return frames


def closeness(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Max/mean abs difference and top-1 agreement of two logit arrays `[..., V]`."""
    ours, ref = ours.astype(np.float32), ref.astype(np.float32)
    diff = np.abs(ours - ref)
    return {"max": float(diff.max()), "mean": float(diff.mean()),
            "top1": float((ours.argmax(-1) == ref.argmax(-1)).mean())}
