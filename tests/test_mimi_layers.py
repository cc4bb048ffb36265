"""Mimi building blocks on tiny random weights: config, streaming convs, the transformer window."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from moshi_mlx.constants import AUDIO_CARD, ENCODER_FRAME_RATE, FRAME_RATE, FRAME_SIZE, MIMI_CODEBOOKS, SAMPLE_RATE
from moshi_mlx.mimi import MimiConfig, MimiConfigError
from moshi_mlx.mimi.config import TransformerConfig
from moshi_mlx.mimi.conv import StreamingConv1d, StreamingConvTranspose1d
from moshi_mlx.mimi.transformer import ProjectedTransformer, _Window

# Kyutai's `moshi.models.loaders._mimi_config`, as it is written there (plus a key we do not know).
KYUTAI_PUBLISHED = {
    "sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
    "seanet": {"channels": 1, "dimension": 512, "causal": True, "n_filters": 64, "n_residual_layers": 1,
               "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
               "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
               "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True},
    "quantizer": {"dimension": 256, "n_q": 32, "bins": 2048, "input_dimension": 512, "output_dimension": 512},
    "transformer": {"d_model": 512, "num_heads": 8, "num_layers": 8, "causal": True, "layer_scale": 0.01,
                    "context": 250, "conv_layout": True, "max_period": 10000, "gating": "none",
                    "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": 2048,
                    "input_dimension": 512, "output_dimensions": [512]},
    "a_key_from_the_future": 1,
}


def _randomize(module, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    flat = [(k, mx.array(rng.standard_normal(v.shape).astype(np.float32) * scale))
            for k, v in tree_flatten(module.parameters())]
    module.update(tree_unflatten(flat))


# ------------------------------------------------------------------------------------------ config


def test_published_preset():
    cfg = MimiConfig.published()
    assert cfg == MimiConfig.from_dict(KYUTAI_PUBLISHED)
    assert (cfg.sample_rate, cfg.frame_size, cfg.encoder_frame_rate) == (SAMPLE_RATE, FRAME_SIZE, ENCODER_FRAME_RATE)
    assert cfg.frame_rate == FRAME_RATE and cfg.resample_stride == 2
    assert (cfg.quantizer.n_q, cfg.quantizer.bins, cfg.quantizer.dimension) == (MIMI_CODEBOOKS, AUDIO_CARD, 256)
    t = cfg.transformer
    assert (t.d_model, t.num_heads, t.num_layers, t.dim_feedforward, t.context) == (512, 8, 8, 2048, 250)
    assert cfg.seanet.ratios == (8, 6, 5, 4) and cfg.seanet.hop_length == 960


@pytest.mark.parametrize("section, key, value, match", [
    ("seanet", "causal", False, "causal"),
    ("seanet", "norm", "weight_norm", "norm"),
    ("transformer", "gating", "silu", "gating"),
    ("transformer", "norm", "rms_norm", "norm"),
    ("transformer", "num_heads", 7, "heads"),
    ("quantizer", "n_q", 1, "n_q_semantic"),
    ("seanet", "ratios", [8, 6, 7], "integer multiple"),
])
def test_config_rejects_unsupported(section, key, value, match):
    d = {**KYUTAI_PUBLISHED, section: {**KYUTAI_PUBLISHED[section], key: value}}
    with pytest.raises(MimiConfigError, match=match):
        MimiConfig.from_dict(d)


# ------------------------------------------------------------------------------------------ convs


@pytest.mark.parametrize("kernel, stride, dilation", [(7, 1, 1), (3, 1, 2), (8, 4, 1), (4, 2, 1), (1, 1, 1)])
def test_conv_matches_zero_padded_conv_and_streams(kernel, stride, dilation):
    conv = StreamingConv1d(3, 5, kernel, stride=stride, dilation=dilation)
    _randomize(conv)
    x = mx.array(np.random.default_rng(1).standard_normal((2, 12 * stride, 3)).astype(np.float32))
    whole = conv(x, conv.make_state(2))
    pad = (kernel - 1) * dilation + 1 - stride
    ref = mx.conv1d(mx.pad(x, [(0, 0), (pad, 0), (0, 0)]), conv.weight, stride=stride, dilation=dilation) + conv.bias
    np.testing.assert_allclose(np.array(whole), np.array(ref), atol=1e-5)
    state = conv.make_state(2)
    chunks = [conv(x[:, i:i + 3 * stride], state) for i in range(0, x.shape[1], 3 * stride)]
    np.testing.assert_allclose(np.array(mx.concatenate(chunks, axis=1)), np.array(whole), atol=1e-5)


def test_replicate_padding_uses_the_first_sample():
    conv = StreamingConv1d(2, 2, 4, stride=2, bias=False, replicate_pad=True)
    _randomize(conv)
    x = mx.array(np.random.default_rng(2).standard_normal((1, 8, 2)).astype(np.float32))
    padded = mx.concatenate([mx.broadcast_to(x[:, :1], (1, 2, 2)), x], axis=1)
    ref = mx.conv1d(padded, conv.weight, stride=2)
    np.testing.assert_allclose(np.array(conv(x, conv.make_state(1))), np.array(ref), atol=1e-6)


@pytest.mark.parametrize("kernel, stride", [(8, 4), (4, 2), (5, 2), (3, 3)])
def test_transposed_conv_matches_mlx_and_streams(kernel, stride):
    conv = StreamingConvTranspose1d(3, 4, kernel, stride=stride)
    _randomize(conv)
    padded = conv.blocks * stride
    conv.weight = mx.concatenate([conv.weight[:, :kernel], mx.zeros((3, padded - kernel, 4))], axis=1)
    x = mx.array(np.random.default_rng(3).standard_normal((2, 9, 3)).astype(np.float32))
    whole = conv(x, conv.make_state(2))
    # MLX weight layout [C_out, K, C_in]; PyTorch trims K - S samples on the right of the full output.
    ref = mx.conv_transpose1d(x, conv.weight[:, :kernel].transpose(2, 1, 0), stride=stride) + conv.bias
    np.testing.assert_allclose(np.array(whole), np.array(ref[:, :9 * stride]), atol=1e-5)
    state = conv.make_state(2)
    chunks = [conv(x[:, i:i + 2], state) for i in range(0, 9, 2)]
    np.testing.assert_allclose(np.array(mx.concatenate(chunks, axis=1)), np.array(whole), atol=1e-5)


def test_depthwise_transposed_conv():
    conv = StreamingConvTranspose1d(3, 3, 4, stride=2, bias=False, depthwise=True)
    _randomize(conv)
    x = mx.array(np.random.default_rng(4).standard_normal((1, 5, 3)).astype(np.float32))
    out = np.array(conv(x, conv.make_state(1)))
    w, xs = np.array(conv.weight), np.array(x)
    ref = np.zeros((1, 5 * 2 + 2, 3), np.float32)
    for t in range(5):
        ref[0, 2 * t:2 * t + 4] += xs[0, t] * w
    np.testing.assert_allclose(out, ref[:, :10], atol=1e-6)


# ------------------------------------------------------------------------------------------ transformer


def test_window_rule_matches_pytorch_ring():
    context, step = 6, 2
    window = _Window(offset=10, length=2, context=context, step=step, use_ring_only=False)
    mask = np.array(window.mask)
    # Ring slot p % 6 held positions 4..9 (slots 0..5: 6 7 8 9 4 5), then come the step's 10 and 11.
    keys = np.array([6, 7, 8, 9, 4, 5, 10, 11])
    # PyTorch writes 10, 11 first, evicting 4 and 5: position 10 sees 6..10, position 11 sees 6..11.
    assert sorted(keys[mask[0]].tolist()) == [6, 7, 8, 9, 10]
    assert sorted(keys[mask[1]].tolist()) == [6, 7, 8, 9, 10, 11]


def test_transformer_batch_equals_steps_beyond_context():
    cfg = TransformerConfig(d_model=8, num_heads=2, num_layers=2, dim_feedforward=16, context=5,
                            input_dimension=8, output_dimension=8)
    tr = ProjectedTransformer(cfg, step=2)
    _randomize(tr, scale=0.5)
    x = mx.array(np.random.default_rng(5).standard_normal((2, 24, 8)).astype(np.float32))
    whole = tr(x, tr.make_state(2))
    state = tr.make_state(2)
    steps = mx.concatenate([tr(x[:, i:i + 2], state) for i in range(0, 24, 2)], axis=1)
    np.testing.assert_allclose(np.array(steps), np.array(whole), atol=1e-5)
    assert state.offset == 24 and state.layers[0].keys.shape == (2, 2, 5, 4)
    # Chunks longer than the ring (8 > 5 tokens) and a step after them give the same result too.
    state = tr.make_state(2)
    mixed = [tr(x[:, :8], state), tr(x[:, 8:16], state), tr(x[:, 16:18], state), tr(x[:, 18:], state)]
    np.testing.assert_allclose(np.array(mx.concatenate(mixed, axis=1)), np.array(whole), atol=1e-5)
    # The window really forgets: changing token 0 leaves positions >= context + step untouched.
    x2 = mx.concatenate([x[:, :1] + 3.0, x[:, 1:]], axis=1)
    moved = np.abs(np.array(tr(x2, tr.make_state(2)) - whole)).max(axis=(0, 2))
    assert moved[0] > 1e-3 and moved[8:].max() == 0.0


def test_transformer_has_no_position_limit():
    """Positions keep counting with no table behind them: 13 minutes in (20000 tokens at 25 Hz, past the
    8192 positions where rustymimi stops) the layer computes what it computes at the start, as attention
    with RoPE only sees relative positions (measured: within 1.3e-6). Outputs
    are compared once the window holds only tokens of this input (from token 12: 2 layers x 5 + 2)."""
    cfg = TransformerConfig(d_model=8, num_heads=2, num_layers=2, dim_feedforward=16, context=5,
                            input_dimension=8, output_dimension=8)
    tr = ProjectedTransformer(cfg, step=2)
    _randomize(tr, scale=0.5)
    x = mx.array(np.random.default_rng(6).standard_normal((1, 24, 8)).astype(np.float32))
    start = tr.make_state(1)
    fresh = np.concatenate([np.array(tr(x[:, i:i + 2], start)) for i in range(0, 24, 2)], axis=1)
    late = tr.make_state(1)
    late.offset = 20_000
    later = np.concatenate([np.array(tr(x[:, i:i + 2], late)) for i in range(0, 24, 2)], axis=1)
    assert late.offset == 20_024 and np.isfinite(later).all()
    np.testing.assert_allclose(later[:, 12:], fresh[:, 12:], atol=1e-4)
    assert np.abs(later[:, 12:] - fresh[:, 12:]).max() > 0  # really a different position, not a no-op


# ------------------------------------------------------------------------------------------ checkpoint layout


def test_published_checkpoint_layout():
    """Our key map covers exactly the published file's 318 tensors (checked once against moshi 0.2.13)."""
    from moshi_mlx.mimi import Mimi
    from moshi_mlx.mimi.weights import pytorch_state_dict

    shapes = {k: tuple(v.shape) for k, v in pytorch_state_dict(Mimi(MimiConfig.published())).items()}
    assert len(shapes) == 318
    assert shapes["encoder.model.0.conv.conv.weight"] == (64, 1, 7)
    assert shapes["encoder.model.12.conv.conv.weight"] == (1024, 512, 16)
    assert shapes["decoder.model.2.convtr.convtr.weight"] == (1024, 512, 16)
    assert shapes["decoder.model.14.conv.conv.bias"] == (1,)
    assert shapes["downsample.conv.conv.conv.weight"] == (512, 512, 4)
    assert shapes["upsample.convtr.convtr.convtr.weight"] == (512, 1, 4)
    assert shapes["encoder_transformer.transformer.layers.7.self_attn.in_proj_weight"] == (1536, 512)
    assert shapes["decoder_transformer.transformer.layers.0.layer_scale_2.scale"] == (512,)
    assert shapes["quantizer.rvq_first.input_proj.weight"] == (256, 512, 1)
    assert shapes["quantizer.rvq_rest.vq.layers.30._codebook.embedding_sum"] == (2048, 256)
    assert "quantizer.rvq_rest.vq.layers.31._codebook.cluster_usage" not in shapes  # 1 + 31 codebooks
