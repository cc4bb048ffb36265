"""The oracle itself: fixtures in the published layouts, not degenerate, and the references agree.

A broken fixture generator would make every parity test meaningless; these tests catch it.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np

from conftest import fixture_dir, load_golden
from moshi_mlx import constants as C


def test_mimi_fixture_is_not_degenerate():
    g = load_golden("mimi_tiny")
    pcm = g["pcm"]
    assert pcm.dtype == np.float32 and pcm.shape[-1] % C.FRAME_SIZE == 0 and pcm.std() > 0.05
    codes = g["codes_32"][0]
    assert codes.shape == (C.MIMI_CODEBOOKS, pcm.shape[-1] // C.FRAME_SIZE)
    assert (codes >= 0).all() and (codes < C.AUDIO_CARD).all()
    distinct = [len(np.unique(row)) for row in codes]
    assert min(distinct) >= 10, f"random Mimi gives near-constant codes: {distinct}"
    np.testing.assert_array_equal(g["codes_8"], g["codes_32"][:, :8])  # RVQ is sequential
    for k in (8, 32):
        audio = g[f"decoded_{k}"]
        assert audio.shape == pcm.shape and np.isfinite(audio).all() and audio.std() > 0.01


def test_mimi_fixture_has_the_published_layout():
    d = fixture_dir("mimi_tiny")
    w = mx.load(str(d / C.MIMI_FILE))
    cfg = json.loads((d / "mimi_config.json").read_text())
    dim, n_q = cfg["seanet"]["dimension"], cfg["quantizer"]["n_q"]
    assert n_q == C.MIMI_CODEBOOKS
    for key in ("encoder.model.0.conv.conv.weight", "decoder.model.14.conv.conv.weight",
                "encoder_transformer.transformer.layers.0.self_attn.in_proj_weight",
                "decoder_transformer.transformer.layers.0.self_attn.out_proj.weight",
                "encoder_transformer.transformer.layers.0.layer_scale_1.scale",
                "downsample.conv.conv.conv.weight", "upsample.convtr.convtr.convtr.weight",
                "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum",
                f"quantizer.rvq_rest.vq.layers.{n_q - 2}._codebook.cluster_usage"):
        assert key in w, key
    assert w["upsample.convtr.convtr.convtr.weight"].shape == (dim, 1, 4)  # depthwise
    assert w["encoder_transformer.transformer.layers.0.self_attn.in_proj_weight"].shape == (3 * dim, dim)
    assert not any("in_projs" in k or "out_projs" in k for k in w)


def test_lm_fixture_is_not_degenerate():
    g = load_golden("lm_tiny")
    cfg = json.loads((fixture_dir("lm_tiny") / "config.json").read_text())
    steps = g["user_codes"].shape[0]
    assert steps >= 64
    text, audio = g["torch_fp32.text"], g["torch_fp32.audio"]
    assert text.shape == (steps,) and audio.shape == (steps, cfg["dep_q"])
    assert len(np.unique(text)) >= 10
    assert min(len(np.unique(col)) for col in audio.T) >= 10
    for key in ("torch_fp32.text_logits", "torch_fp32.audio_logits"):
        logits = g[key]
        assert np.isfinite(logits).all() and logits.std() > 0.1
    assert g["torch_fp32.text_logits"].shape == (steps, cfg["text_card"])
    assert g["torch_fp32.audio_logits"].shape == (steps, cfg["dep_q"], cfg["card"])


def test_lm_fixture_has_the_published_layouts():
    d = fixture_dir("lm_tiny")
    cfg = json.loads((d / "config.json").read_text())
    dim, ddim, dep_q = cfg["dim"], cfg["depformer_dim"], cfg["dep_q"]
    pt = mx.load(str(d / "model.safetensors"))
    assert pt["out_norm.alpha"].shape == (1, 1, dim)
    assert pt["transformer.layers.0.self_attn.in_proj_weight"].shape == (3 * dim, dim)
    # weights per step: the depformer's 8 attention matrices concatenated along dim 0
    assert pt["depformer.layers.0.self_attn.in_proj_weight"].shape == (dep_q * 3 * ddim, ddim)
    assert pt["depformer.layers.0.self_attn.out_proj.weight"].shape == (dep_q * ddim, ddim)
    assert f"depformer.layers.0.gating.{dep_q - 1}.linear_in.weight" in pt
    assert all(v.dtype == mx.bfloat16 for v in pt.values())
    bf16 = mx.load(str(d / "mlx" / C.LM_FILES["bf16"]))
    assert "depformer.slices.0.transformer.layers.0.self_attn.in_proj.weight" in bf16
    assert bf16["out_norm.weight"].shape == (dim,)
    for name, bits, group in (("q8", 8, 64), ("q4", 4, 32)):
        q = mx.load(str(d / "mlx" / C.LM_FILES[name]))
        # every Linear and every Embedding is quantized, depformer embeddings and heads included
        for prefix in ("transformer.layers.0.self_attn.in_proj", "text_emb", "audio_embs.0",
                       "depformer.slices.0.emb", "depformer.slices.1.linear_out", "text_linear"):
            w, s = q[prefix + ".weight"], q[prefix + ".scales"]
            assert w.dtype == mx.uint32 and prefix + ".biases" in q
            in_features = w.shape[-1] * 32 // bits
            assert in_features // s.shape[-1] == group, prefix
        assert "out_norm.weight" in q and "out_norm.scales" not in q


def test_fp32_references_agree_token_for_token_within_the_context():
    g = load_golden("lm_tiny")
    np.testing.assert_array_equal(g["mlx_fp32.text"], g["torch_fp32.text"])
    np.testing.assert_array_equal(g["mlx_fp32.audio"], g["torch_fp32.audio"])
    err = np.abs(g["tf.mlx_fp32.text_logits"].astype(np.float32) - g["torch_fp32.text_logits"]).max()
    assert err < 5e-3  # stored as float16: its rounding dominates


def test_short_context_run_covers_the_window():
    g = load_golden("lm_tiny")
    ctx = int(g["ctx.context"].reshape(-1)[0])
    steps = g["user_codes"].shape[0]
    assert ctx * 2 <= steps
    both = lambda run: np.c_[g[f"{run}.text"], g[f"{run}.audio"]]  # noqa: E731
    # Inside the window the context changes nothing...
    np.testing.assert_array_equal(both("ctx.torch_fp32")[:ctx], both("torch_fp32")[:ctx])
    # ...past it the run differs from the long-context one: the window was exercised.
    assert (both("ctx.torch_fp32")[ctx:] != both("torch_fp32")[ctx:]).any()
    # moshi_mlx 0.3.0 attends to context + 1 positions (FACTS.md), so it parts from PyTorch there.
    np.testing.assert_array_equal(both("ctx.mlx_fp32")[:ctx], both("ctx.torch_fp32")[:ctx])
    assert (both("ctx.mlx_fp32")[ctx:] != both("ctx.torch_fp32")[ctx:]).any()
