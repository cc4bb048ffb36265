"""Compiled Mimi streaming steps (issue #11): same results as the eager layers, traced once, fixed-shape state."""

import threading
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from moshi_mlx.constants import FRAME_SIZE, MIMI_FILE
from moshi_mlx.mimi import load_mimi
from moshi_mlx.mimi.compiled import set_state_arrays, state_arrays
from moshi_mlx.mimi.config import TransformerConfig
from moshi_mlx.mimi.transformer import ProjectedTransformer

FIXTURES = Path(__file__).parent / "fixtures" / "mimi_tiny"

pytestmark = pytest.mark.skipif(not (FIXTURES / MIMI_FILE).is_file(), reason=f"Mimi fixture not found in {FIXTURES}")


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    with np.load(FIXTURES / "golden.npz") as g:
        return g["pcm"]


def _mimi(num_codebooks=8, compiled=True):
    mimi = load_mimi(FIXTURES / MIMI_FILE, num_codebooks=num_codebooks)
    mimi.compile_steps = compiled
    return mimi


def _stream(mimi, pcm, frames=None):
    """Encode then decode every frame; returns (codes [B, K, F], audio [B, 1, F * 1920]) as numpy."""
    B = pcm.shape[0]
    enc, dec = mimi.make_encode_state(B), mimi.make_decode_state(B)
    frames = frames or pcm.shape[2] // FRAME_SIZE
    codes, audio = [], []
    for i in range(frames):
        c = mimi.encode_step(mx.array(pcm[:, :, i * FRAME_SIZE:(i + 1) * FRAME_SIZE]), enc)
        y = mimi.decode_step(c, dec, check_range=False)
        mx.eval(c, y)
        codes.append(np.array(c))
        audio.append(np.array(y))
    return np.concatenate(codes, axis=2), np.concatenate(audio, axis=2)


def test_compiled_equals_eager_over_several_windows(pcm):
    mimi = _mimi()
    window_frames = mimi.cfg.transformer.context // mimi.cfg.resample_stride
    frames = pcm.shape[2] // FRAME_SIZE
    assert frames >= 2 * window_frames + 2, "clip too short to cross two transformer windows"
    codes, audio = _stream(mimi, pcm)
    eager_codes, eager_audio = _stream(_mimi(compiled=False), pcm)
    np.testing.assert_array_equal(codes, eager_codes)
    assert np.abs(audio - eager_audio).max() < 1e-5
    # And both equal the batch path (the window rule is the same; see test_mimi_parity for the reference).
    np.testing.assert_array_equal(codes, np.array(mimi.encode(mx.array(pcm))))
    assert np.abs(audio - np.array(mimi.decode(mx.array(codes)))).max() < 1e-5


def test_traced_once_and_state_shapes_fixed(pcm):
    mimi = _mimi()
    enc, dec = mimi.make_encode_state(1), mimi.make_decode_state(1)
    shapes = [(a.shape, a.dtype) for a in state_arrays(enc) + state_arrays(dec)]
    for i in range(2 * mimi.cfg.transformer.context // mimi.cfg.resample_stride + 3):
        c = mimi.encode_step(mx.array(pcm[:, :, i * FRAME_SIZE:(i + 1) * FRAME_SIZE]), enc)
        mx.eval(mimi.decode_step(c, dec))
        assert [(a.shape, a.dtype) for a in state_arrays(enc) + state_arrays(dec)] == shapes
    assert mimi._compiled_steps.traces == {"encode": 1, "decode": 1}
    # A new stream of the same shape reuses the graphs; another batch size is one more trace per side.
    _stream(mimi, pcm, frames=2)
    assert mimi._compiled_steps.traces == {"encode": 1, "decode": 1}
    _stream(mimi, np.concatenate([pcm, pcm]), frames=2)
    assert mimi._compiled_steps.traces == {"encode": 2, "decode": 2}
    offset = enc.transformer.offset
    assert isinstance(offset, mx.array) and offset.shape == () and offset.dtype == mx.int32
    assert offset.item() == enc.frames * mimi.cfg.resample_stride


def test_batch_of_two_streams(pcm):
    mimi = _mimi()
    second = np.ascontiguousarray(0.5 * pcm[:, :, ::-1])
    both_codes, both_audio = _stream(mimi, np.concatenate([pcm, second]), frames=24)
    for row, clip in enumerate([pcm, second]):
        codes, audio = _stream(mimi, clip, frames=24)
        np.testing.assert_array_equal(both_codes[row:row + 1], codes)
        assert np.abs(both_audio[row:row + 1] - audio).max() < 1e-5


def test_new_weights_rebuild_the_graphs(pcm):
    mimi = _mimi()
    before, _ = _stream(mimi, pcm, frames=3)
    rng = np.random.default_rng(0)
    flat = [(k, v * mx.array(1.0 + 0.2 * rng.standard_normal(v.shape).astype(np.float32)))
            for k, v in tree_flatten(mimi.parameters())]
    mimi.update(tree_unflatten(flat))
    after, after_audio = _stream(mimi, pcm, frames=3)
    mimi.compile_steps = False
    eager, eager_audio = _stream(mimi, pcm, frames=3)
    assert (after != before).any(), "the new weights must change the codes"
    np.testing.assert_array_equal(after, eager)
    assert np.abs(after_audio - eager_audio).max() < 1e-5


def test_steps_run_on_another_thread(pcm):
    mimi = _mimi()
    expected, expected_audio = _stream(mimi, pcm, frames=4)  # traced on this thread
    out = {}

    def worker():
        try:
            mx.set_default_stream(mx.new_stream(mx.default_device()))
            out["result"] = _stream(mimi, pcm, frames=4)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            out["error"] = e

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    np.testing.assert_array_equal(out["result"][0], expected)
    assert np.abs(out["result"][1] - expected_audio).max() < 1e-5


@pytest.mark.parametrize("context", [5, 6])  # 5: a step can wrap the ring (scatter write); 6: slice write
def test_transformer_step_compiles_like_eager(context):
    cfg = TransformerConfig(d_model=8, num_heads=2, num_layers=2, dim_feedforward=16, context=context,
                            input_dimension=8, output_dimension=8)
    tr = ProjectedTransformer(cfg, step=2)
    rng = np.random.default_rng(1)
    tr.update(tree_unflatten([(k, mx.array(rng.standard_normal(v.shape).astype(np.float32) * 0.5))
                              for k, v in tree_flatten(tr.parameters())]))
    x = mx.array(rng.standard_normal((2, 24, 8)).astype(np.float32))
    traces = []

    def step(x, arrays):
        traces.append(1)
        state = tr.make_state(2)
        set_state_arrays(state, arrays)
        y = tr(x, state)
        return y, state_arrays(state)

    compiled = mx.compile(step)
    eager_state = tr.make_state(2)
    arrays = state_arrays(eager_state)
    for i in range(0, 24, 2):
        y, arrays = compiled(x[:, i:i + 2], arrays)
        ref = tr(x[:, i:i + 2], eager_state)
        np.testing.assert_allclose(np.array(y), np.array(ref), atol=1e-6)
    assert len(traces) == 1 and arrays[-1].item() == 24
    whole = tr(x, tr.make_state(2))
    assert np.abs(np.array(whole[:, -2:]) - np.array(y)).max() < 1e-5
