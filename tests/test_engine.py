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


def test_stream_equals_step_loop(model):
    """The pipelined engine gives exactly the serial loop's tokens, codes and audio, in input order."""
    pcm = voice_like(20)
    frames = [pcm[i * FRAME_SIZE:(i + 1) * FRAME_SIZE] for i in range(20)]
    engine = model.engine(SamplingParams(seed=7))
    serial = [engine.step(f) for f in frames]
    serial_words = [w.text for w in engine.words(final=True)]

    engine.reset(seed=7)
    streamed = list(engine.stream(iter(frames)))
    assert len(streamed) == 20
    assert [r.text_token for r in streamed] == [r.text_token for r in serial]
    assert [r.text for r in streamed] == [r.text for r in serial]
    for a, b in zip(streamed, serial):
        assert (a.moshi_codes is None) == (b.moshi_codes is None)
        if a.moshi_codes is not None:
            np.testing.assert_array_equal(a.moshi_codes, b.moshi_codes)
        np.testing.assert_array_equal(a.pcm, b.pcm)
        assert a.latency_s is not None and a.latency_s > 0 and b.latency_s is None
    assert np.abs(np.concatenate([r.pcm for r in streamed])).max() > 1e-3
    assert [w.text for w in engine.words(final=True)] == serial_words

    # The conversation carries on serially from where the pipeline left it (state settled).
    engine.reset(seed=7)
    head = list(engine.stream(iter(frames[:12])))
    tail = [engine.step(f) for f in frames[12:]]
    assert [r.text_token for r in head + tail] == [r.text_token for r in serial]
    np.testing.assert_array_equal(np.concatenate([r.pcm for r in head + tail]),
                                  np.concatenate([r.pcm for r in serial]))


def test_stream_runs_the_stages_concurrently(model):
    """Frame 0's decode cannot finish until frame 2 is being encoded: a serial loop would never get there."""
    import threading

    engine = model.engine(SamplingParams(seed=1))
    encoding_frame_2 = threading.Event()
    encoded = []
    real_encode, real_decode = engine.encode, engine.decode

    def encode(frame):
        encoded.append(len(encoded))
        if len(encoded) == 3:
            encoding_frame_2.set()
        return real_encode(frame)

    def decode(codes):
        assert encoding_frame_2.wait(30), "the encode stage did not run ahead of the decode stage"
        return real_decode(codes)

    engine.encode, engine.decode = encode, decode
    pcm = voice_like(6)
    results = list(engine.stream(pcm[i * FRAME_SIZE:(i + 1) * FRAME_SIZE] for i in range(6)))
    assert len(results) == 6


def test_stream_stops_early_and_reports_errors(model):
    engine = model.engine(SamplingParams(seed=1))
    pcm = voice_like(8)
    frames = [pcm[i * FRAME_SIZE:(i + 1) * FRAME_SIZE] for i in range(8)]
    it = engine.stream(iter(frames))
    first = [next(it) for _ in range(2)]
    it.close()  # the stages stop; the engine stays usable
    assert len(first) == 2
    engine.reset()
    assert len(list(engine.stream(iter(frames)))) == 8

    bad = frames[:3] + [np.zeros(100, np.float32)]
    engine.reset()
    with pytest.raises(ValueError, match="a frame is 1920 samples"):
        list(engine.stream(iter(bad)))


def test_pipeline_warmup_leaves_nothing_to_trace(model):
    """The stage threads outlive a run: after a pipelined warm-up, a conversation traces no compiled step
    again (MLX keeps compiled graphs per thread, so new threads would stutter at every start)."""
    engine = model.engine(SamplingParams(seed=2))
    engine.warmup(pipelined=True)
    traces = dict(model.mimi._compiled_steps.traces)
    pcm = voice_like(6)
    for _ in range(2):
        engine.reset()
        assert len(list(engine.stream(pcm[i * FRAME_SIZE:(i + 1) * FRAME_SIZE] for i in range(6)))) == 6
    assert model.mimi._compiled_steps.traces == traces
    engine.close()
    engine.reset()
    assert len(list(engine.stream(iter([pcm[:FRAME_SIZE]])))) == 1  # a new pipeline after close()
    engine.close()
