"""Parity of the LM with Kyutai's references on the lm_tiny fixture (see tests/fixtures/README.md).

Run with `-s` to see the closeness tables of the bf16/q8/q4 checks.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from test_lm_common import closeness, fixture_dir, frames_from_raw, golden, run_steps

from moshi_mlx.lm import LmConfig, load_lm

FP32_LOGIT_TOL = 1e-4
"""fp32 greedy decisions on random weights can be ~1.5e-4 apart (FACTS.md): stay below that."""


@pytest.fixture(scope="module")
def gold():
    return golden()


@pytest.fixture(scope="module")
def config_path():
    return fixture_dir() / "config.json"


def _check_greedy(result, config, ref_prefix, gold):
    text, audio = gold[f"{ref_prefix}.text"], gold[f"{ref_prefix}.audio"]
    np.testing.assert_array_equal(result["text"][0], text)
    for t, (ours, ref) in enumerate(zip(result["frames"], frames_from_raw(config, audio))):
        if ref is None:
            assert ours is None, f"step {t}: a frame came out before the delays allow"
        else:
            np.testing.assert_array_equal(ours[0], ref, err_msg=f"Moshi frame after step {t}")
    text_diff = np.abs(result["text_logits"][0] - gold[f"{ref_prefix}.text_logits"]).max()
    audio_diff = np.abs(result["audio_logits"][0] - gold[f"{ref_prefix}.audio_logits"]).max()
    print(f"\n{ref_prefix}: max |logit diff| text {text_diff:.2e}, audio {audio_diff:.2e}")
    assert text_diff < FP32_LOGIT_TOL and audio_diff < FP32_LOGIT_TOL


def test_fp32_greedy_matches_pytorch(gold, config_path):
    model = load_lm(fixture_dir() / "model.safetensors", dtype=mx.float32, config=config_path)
    result = run_steps(model, gold["user_codes"])
    _check_greedy(result, model.config, "torch_fp32", gold)


def test_short_context_matches_pytorch_past_the_window(gold, config_path):
    context = int(np.asarray(gold["ctx.context"]).reshape(-1)[0])
    assert context < len(gold["user_codes"]), "the fixture must run past the window"
    config = dict(json.loads(config_path.read_text()), context=context)
    model = load_lm(fixture_dir() / "model.safetensors", dtype=mx.float32, config=config)
    result = run_steps(model, gold["user_codes"])
    _check_greedy(result, model.config, "ctx.torch_fp32", gold)


def _teacher_forced(path, dtype, config_path, gold):
    model = load_lm(path, dtype=dtype, config=config_path)
    forced = (gold["torch_fp32.text"], gold["torch_fp32.audio"])
    result = run_steps(model, gold["user_codes"], forced=forced)
    return result["text_logits"][0], result["audio_logits"][0]


# (our run, moshi_mlx's run on the same file and activation dtype, file, our dtype, margin)
QUANT_CASES = [
    ("fp32", "mlx_fp32", "model.safetensors", mx.float32, 0.1),
    ("bf16", "mlx_bf16", "model.safetensors", None, 1.5),
    ("q8", "mlx_q8", "model.q8.safetensors", None, 1.5),
    ("q4", "mlx_q4", "model.q4.safetensors", None, 1.5),
    ("q8 fp32 act", "mlx_q8_f32", "model.q8.safetensors", mx.float32, 0.1),
    ("q4 fp32 act", "mlx_q4_f32", "model.q4.safetensors", mx.float32, 0.1),
]


@pytest.mark.parametrize("name,theirs,file,dtype,margin", QUANT_CASES, ids=[c[0] for c in QUANT_CASES])
def test_mlx_layout_files_match_moshi_mlx(gold, config_path, name, theirs, file, dtype, margin):
    """Ours vs moshi_mlx on the same file must be as close as moshi_mlx is to PyTorch bf16 (times margin).

    bf16 activations: both sides carry bf16 noise, so the margin is loose. fp32 activations on a quantized
    file: both dequantize the same packed weights, so ours must sit far closer to moshi_mlx than the
    quantization error (moshi_mlx vs PyTorch bf16).
    """
    if f"tf.{theirs}.text_logits" not in gold:
        pytest.skip(f"fixture has no tf.{theirs} run")
    text, audio = _teacher_forced(fixture_dir() / "mlx" / file, dtype, config_path, gold)
    rows = []
    for stream, ours in (("text", text), ("audio", audio)):
        ref = gold[f"tf.{theirs}.{stream}_logits"]
        torch_bf16 = gold[f"tf.torch_bf16.{stream}_logits"]
        vs_theirs, theirs_vs_torch = closeness(ours, ref), closeness(ref, torch_bf16)
        vs_torch = closeness(ours, torch_bf16)
        rows.append((stream, vs_theirs, theirs_vs_torch, vs_torch))
    print(f"\n{name:12} {'stream':6} {'ours~theirs max/mean/top1':>28} {'theirs~torch_bf16':>26} "
          f"{'ours~torch_bf16':>26}")
    for stream, a, b, c in rows:
        fmt = lambda d: f"{d['max']:.4f}/{d['mean']:.5f}/{d['top1']:.3f}"  # noqa: E731
        print(f"{name:12} {stream:6} {fmt(a):>28} {fmt(b):>26} {fmt(c):>26}")
    for stream, vs_theirs, theirs_vs_torch, _ in rows:
        assert vs_theirs["max"] <= margin * theirs_vs_torch["max"], (stream, vs_theirs, theirs_vs_torch)
        assert vs_theirs["mean"] <= margin * theirs_vs_torch["mean"], (stream, vs_theirs, theirs_vs_torch)


def test_pytorch_and_mlx_layouts_give_the_same_logits(gold, config_path):
    torch_layout = _teacher_forced(fixture_dir() / "model.safetensors", mx.float32, config_path, gold)
    mlx_layout = _teacher_forced(fixture_dir() / "mlx" / "model.safetensors", mx.float32, config_path, gold)
    for ours, theirs in zip(torch_layout, mlx_layout):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_quantization_is_detected_from_the_tensors(config_path):
    for file, bits, group in (("model.q8.safetensors", 8, 64), ("model.q4.safetensors", 4, 32)):
        model = load_lm(fixture_dir() / "mlx" / file, config=config_path)
        for layer in (model.text_linear, model.emb, model.depformer.linear_in, model.depformer.slices[3].emb,
                      model.depformer.slices[7].linear_out, model.transformer.layers[0].gating.linear_in):
            assert (layer.bits, layer.group_size) == (bits, group), (file, type(layer).__name__)
        assert model.dtype == mx.bfloat16
        assert isinstance(model.config, LmConfig)
