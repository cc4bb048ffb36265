"""Streaming generation on a tiny random model: cache vs full forward, batching, seeds, delays."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from test_lm_common import frames_from_raw, run_steps, tiny_model

from app.bench_lm import counting_syncs
from moshi_mlx.lm import Generator, delayed_inputs

STEPS = 24
TOL = 1e-4


def _user(steps: int, card: int, seed: int = 1, batch: int | None = None) -> np.ndarray:
    shape = (steps, 8) if batch is None else (steps, batch, 8)
    return np.random.default_rng(seed).integers(0, card, size=shape).astype(np.int32)


def _raw_audio(result) -> np.ndarray:
    """Per-step codebooks of a greedy run: the argmax of each codebook's logits."""
    return result["audio_logits"][0].argmax(-1).astype(np.int32)


DELAYS_2 = [0, 0] + [2] * 7 + [0] + [2] * 7  # Hibiki-like acoustic delay 2
DELAYS_MIXED = [1, 0] + [1] * 7 + [0, 1, 2] + [1] * 5  # text delayed too, user delays differing


@pytest.mark.parametrize("context,delays", [(3000, None), (7, None), (3000, DELAYS_2), (7, DELAYS_MIXED)],
                         ids=["in-window", "past-window", "delay-2", "mixed-delays"])
def test_cached_streaming_equals_full_forward(context, delays):
    model = tiny_model(context=context, **({} if delays is None else {"delays": delays}))
    user = _user(STEPS, model.config.card)
    result = run_steps(model, user)
    text = result["text"][0]
    audio = _raw_audio(result)  # greedy: the sampled tokens are the argmax
    inputs = delayed_inputs(model.config, text, audio, user)
    step_tokens = np.concatenate([text[:, None], audio], axis=1)
    text_logits, audio_logits = model(mx.array(inputs)[None], mx.array(step_tokens)[None])
    np.testing.assert_allclose(np.array(text_logits[0]), result["text_logits"][0], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.array(audio_logits[0]), result["audio_logits"][0], atol=TOL, rtol=0)


def test_forward_temporal_with_cache_equals_full_sequence():
    model = tiny_model(context=9)
    tokens = mx.array(np.random.default_rng(2).integers(-1, model.config.card, size=(1, 17, 14)).astype(np.int32))
    _, logits_full = model.forward_temporal(tokens)
    cache = model.make_cache(1)
    _, logits_a = model.forward_temporal(tokens[:, :, :5], cache)  # several positions at once
    parts = [logits_a] + [model.forward_temporal(tokens[:, :, t:t + 1], cache)[1] for t in range(5, 14)]
    np.testing.assert_allclose(np.array(mx.concatenate(parts, axis=1)), np.array(logits_full), atol=TOL, rtol=0)
    with pytest.raises(ValueError):
        model.forward_temporal(tokens[:, :, :12], model.make_cache(1))  # would wrap the 9-slot ring


def test_generator_takes_a_fresh_cache_only():
    model = tiny_model()
    cache = model.make_cache(2)
    gen = Generator(model, batch_size=2, cache=cache)
    assert gen.cache is cache
    gen.step(np.zeros((2, 8), np.int32))
    with pytest.raises(ValueError):
        Generator(model, batch_size=2, cache=cache)


@pytest.mark.parametrize("delays", [None, DELAYS_2], ids=["7b", "delay-2"])
def test_frames_follow_the_delays(delays):
    model = tiny_model(**({} if delays is None else {"delays": delays}))
    result = run_steps(model, _user(STEPS, model.config.card))
    expected = frames_from_raw(model.config, _raw_audio(result))
    first = max(model.config.audio_delays)
    assert all(f is None for f in result["frames"][:first]) and result["frames"][first] is not None
    for ours, ref in zip(result["frames"][first:], expected[first:]):
        np.testing.assert_array_equal(ours[0], ref)


def test_user_frame_is_first_seen_one_step_later():
    model = tiny_model()
    user = _user(6, model.config.card)
    base = run_steps(model, user)
    changed_user = user.copy()
    changed_user[3, 0] = (user[3, 0] + 1) % model.config.card  # cb0 (delay 0) of frame 3
    changed = run_steps(model, changed_user)
    np.testing.assert_array_equal(changed["text_logits"][0][:4], base["text_logits"][0][:4])
    assert np.abs(changed["text_logits"][0][4] - base["text_logits"][0][4]).max() > 0
    changed_user = user.copy()
    changed_user[3, 5] = (user[3, 5] + 1) % model.config.card  # acoustic codebook (delay 1) of frame 3
    changed = run_steps(model, changed_user)
    np.testing.assert_array_equal(changed["text_logits"][0][:5], base["text_logits"][0][:5])
    assert np.abs(changed["text_logits"][0][5] - base["text_logits"][0][5]).max() > 0


def test_batch_of_two_equals_two_single_runs():
    model = tiny_model()
    user = _user(STEPS, model.config.card, batch=2)
    both = run_steps(model, user, batch_size=2)
    for b in range(2):
        single = run_steps(model, user[:, b])
        np.testing.assert_array_equal(both["text"][b], single["text"][0])
        for ours, ref in zip(both["frames"], single["frames"]):
            assert (ours is None) == (ref is None)
            if ours is not None:
                np.testing.assert_array_equal(ours[b], ref[0])
        np.testing.assert_allclose(both["text_logits"][b], single["text_logits"][0], atol=TOL, rtol=0)
        np.testing.assert_allclose(both["audio_logits"][b], single["audio_logits"][0], atol=TOL, rtol=0)


def test_seed_reproduces_sampling_and_seeds_differ():
    model = tiny_model()
    user = _user(STEPS, model.config.card)
    sampling = {"text_temp": 1.0, "audio_temp": 1.0, "text_top_k": 20, "audio_top_k": 30}
    first = run_steps(model, user, seed=7, **sampling)
    again = run_steps(model, user, seed=7, **sampling)
    other = run_steps(model, user, seed=8, **sampling)
    np.testing.assert_array_equal(first["text"], again["text"])
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(first["frames"], again["frames"]))
    differs = not np.array_equal(first["text"], other["text"]) or any(
        a is not None and not np.array_equal(a, b) for a, b in zip(first["frames"], other["frames"]))
    assert differs


def test_top_k_one_is_greedy():
    model = tiny_model()
    user = _user(8, model.config.card)
    greedy = run_steps(model, user)
    top1 = run_steps(model, user, text_temp=0.9, audio_temp=0.9, text_top_k=1, audio_top_k=1, seed=3)
    np.testing.assert_array_equal(greedy["text"], top1["text"])


def test_one_host_sync_per_step():
    model = tiny_model()
    gen = Generator(model, text_temp=0.7, audio_temp=0.8, seed=0)
    user = _user(6, model.config.card)
    gen.step(user[0][None])  # compile outside the count
    with counting_syncs() as count:
        for t in range(1, 6):
            gen.step(mx.array(user[t][None]))
    assert count["n"] == 5, f"{count['n']} host syncs in 5 steps"


def test_bad_user_codes_raise_one_line_errors():
    model = tiny_model()
    gen = Generator(model, batch_size=2)
    for bad in (np.zeros((1, 8), np.int32), np.zeros((2, 3), np.int32), np.zeros((2, 8), np.float32),
                np.full((2, 8), 10_000, np.int32)):
        with pytest.raises(ValueError) as err:
            gen.step(bad)
        assert "\n" not in str(err.value)


def test_generators_share_compiled_steps_but_see_new_weights():
    model = tiny_model()
    user = _user(4, model.config.card)
    before = run_steps(model, user)
    assert Generator(model, text_temp=0.0, audio_temp=0.0)._step_compiled is \
        Generator(model, text_temp=0.0, audio_temp=0.0)._step_compiled
    model.text_linear.weight = -model.text_linear.weight  # compiled graphs hold the old arrays as constants
    after = run_steps(model, user)
    np.testing.assert_allclose(after["text_logits"][0][0], -before["text_logits"][0][0], atol=TOL, rtol=0)
