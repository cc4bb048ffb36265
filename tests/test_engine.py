"""The engine frame by frame (what the chat runs) against the offline path, and its host syncs per step."""

from __future__ import annotations

import numpy as np
import pytest

from app.bench_lm import counting_syncs
from moshi_mlx.constants import FRAME_SIZE, SAMPLE_RATE
from moshi_mlx.engine import SamplingParams


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from moshi_mlx.loading import load

    return load(tiny_checkpoint)


def voice_like(frames: int) -> np.ndarray:
    t = np.arange(frames * FRAME_SIZE) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    return (0.3 * np.sin(2 * np.pi * 170 * t * (1 + 0.3 * t)) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


def test_frame_by_frame_equals_offline(model):
    """Same seed, same input: the streaming engine and run_offline sample the same tokens, and the audio
    decoded frame by frame equals the batch decode (shifted by the frames' completion delay)."""
    pcm = voice_like(24)
    engine = model.engine(SamplingParams(seed=5))
    offline = engine.run_offline(pcm)

    engine.reset(seed=5)
    steps = [engine.step(pcm[i * FRAME_SIZE:(i + 1) * FRAME_SIZE]) for i in range(24)]
    delay = model.lm.config.max_delay
    assert [s.text_token for s in steps] == list(offline.text_tokens)
    assert all(s.moshi_codes is None for s in steps[:delay])
    codes = np.stack([s.moshi_codes for s in steps[delay:]], axis=1)[None]
    np.testing.assert_array_equal(codes, offline.moshi_codes)
    assert len(set(codes.ravel().tolist())) > 5  # a random model still speaks: not a trivial comparison

    streamed = np.concatenate([s.pcm for s in steps])
    assert not streamed[:delay * FRAME_SIZE].any()
    # Moshi's frame f is complete at step f + delay; offline places it at its own time f * 80 ms.
    np.testing.assert_allclose(streamed[delay * FRAME_SIZE:], offline.reply[:(24 - delay) * FRAME_SIZE],
                               atol=1e-5)
    assert np.abs(streamed).max() > 1e-3
    assert [w.text for w in engine.words(final=True)] == [w.text for w in offline.words]


def test_one_host_sync_per_step(model):
    """Encode, LM step and decode are read in a single wait for the device."""
    engine = model.engine(SamplingParams(seed=1))
    pcm = voice_like(8)
    for i in range(3):  # past the LM's delays, so that every counted step decodes a frame
        engine.step(pcm[i * FRAME_SIZE:(i + 1) * FRAME_SIZE])
    with counting_syncs() as count:
        for i in range(3, 8):
            result = engine.step(pcm[i * FRAME_SIZE:(i + 1) * FRAME_SIZE])
            assert result.moshi_codes is not None
    assert count["n"] == 5, f"{count['n']} host syncs in 5 engine steps"
