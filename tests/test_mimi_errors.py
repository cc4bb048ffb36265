"""Bad input to the Mimi codec and bad checkpoints give one-line, actionable errors."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from moshi_mlx.constants import FRAME_SIZE, MIMI_FILE
from moshi_mlx.mimi import (
    Mimi,
    MimiConfig,
    MimiConfigError,
    MimiError,
    MimiFileNotFoundError,
    MimiInputError,
    MimiLoadError,
    load_mimi,
)
from moshi_mlx.mimi.weights import pytorch_state_dict

TINY = {
    "sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
    "seanet": {"dimension": 16, "n_filters": 2, "ratios": [8, 6, 5, 4], "kernel_size": 7, "last_kernel_size": 3,
               "residual_kernel_size": 3, "n_residual_layers": 1, "compress": 2, "causal": True},
    "quantizer": {"dimension": 8, "n_q": 4, "bins": 16},
    "transformer": {"d_model": 16, "num_heads": 2, "num_layers": 1, "dim_feedforward": 32, "context": 6,
                    "layer_scale": 0.01, "max_period": 10000, "some_future_key": "ignored"},
}
BINS = TINY["quantizer"]["bins"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Mimi written in the published PyTorch layout, with its config beside it."""
    folder = tmp_path_factory.mktemp("mimi")
    model = Mimi(MimiConfig.from_dict(TINY), num_codebooks=4)
    rng = np.random.default_rng(0)
    model.update(_random_like(model, rng))
    mx.save_safetensors(str(folder / MIMI_FILE), pytorch_state_dict(model))
    (folder / "mimi_config.json").write_text(json.dumps(TINY))
    return folder / MIMI_FILE


def _random_like(model, rng):
    flat = [(k, mx.array(rng.standard_normal(v.shape).astype(np.float32) * 0.1))
            for k, v in tree_flatten(model.parameters())]
    return tree_unflatten(flat)


@pytest.fixture(scope="module")
def mimi(checkpoint):
    return load_mimi(checkpoint, num_codebooks=4)


def _raises(cls, fn, *args, match: str):
    with pytest.raises(cls, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value), "error message must be one line"
    assert isinstance(info.value, MimiError)
    return info.value


# ------------------------------------------------------------------------------------------ audio input


def test_tiny_checkpoint_round_trips(mimi):
    codes = mimi.encode(mx.zeros((1, 1, 2 * FRAME_SIZE)))
    assert codes.shape == (1, 4, 2) and codes.dtype == mx.int32
    assert mimi.decode(codes).shape == (1, 1, 2 * FRAME_SIZE)


@pytest.mark.parametrize("shape", [(FRAME_SIZE,), (1, FRAME_SIZE), (1, 1, 1, FRAME_SIZE)])
def test_encode_rejects_wrong_rank(mimi, shape):
    _raises(ValueError, mimi.encode, mx.zeros(shape), match=r"shape \[batch, 1, samples\]")


def test_encode_rejects_wrong_channels(mimi):
    _raises(MimiInputError, mimi.encode, mx.zeros((1, 2, FRAME_SIZE)), match="1 channel")


def test_encode_rejects_integer_audio(mimi):
    _raises(MimiInputError, mimi.encode, mx.zeros((1, 1, FRAME_SIZE), dtype=mx.int16), match="float audio")


@pytest.mark.parametrize("length", [0, FRAME_SIZE - 1, FRAME_SIZE + 960])
def test_encode_rejects_partial_frames(mimi, length):
    _raises(MimiInputError, mimi.encode, mx.zeros((1, 1, length)), match=f"multiple of the frame size {FRAME_SIZE}")


def test_encode_rejects_non_arrays(mimi):
    _raises(MimiInputError, mimi.encode, [[0.0] * FRAME_SIZE], match="mx.array or numpy array")


def test_chunk_frames_must_be_positive(mimi):
    _raises(MimiInputError, mimi.encode, mx.zeros((1, 1, FRAME_SIZE)), 0, match="chunk_frames")
    _raises(MimiInputError, mimi.decode, mx.zeros((1, 4, 1), dtype=mx.int32), -1, match="chunk_frames")


def test_encode_accepts_numpy(mimi):
    codes = mimi.encode(np.zeros((1, 1, FRAME_SIZE), dtype=np.float32))
    assert codes.shape == (1, 4, 1)


def test_encode_step_rejects_wrong_frame_length(mimi):
    state = mimi.make_encode_state(1)
    _raises(MimiInputError, mimi.encode_step, mx.zeros((1, 1, 2 * FRAME_SIZE)), state,
            match=f"exactly {FRAME_SIZE} samples")
    _raises(MimiInputError, mimi.encode_step, mx.zeros((1, 1, 960)), state, match=f"exactly {FRAME_SIZE}")
    assert state.frames == 0, "a rejected frame must not advance the state"


def test_step_rejects_batch_mismatch_and_wrong_state(mimi):
    enc, dec = mimi.make_encode_state(2), mimi.make_decode_state(1)
    _raises(MimiInputError, mimi.encode_step, mx.zeros((1, 1, FRAME_SIZE)), enc, match="batch 2")
    _raises(MimiInputError, mimi.encode_step, mx.zeros((1, 1, FRAME_SIZE)), dec, match="EncodeState")
    _raises(MimiInputError, mimi.decode_step, mx.zeros((1, 4, 1), dtype=mx.int32), enc, match="DecodeState")
    _raises(MimiInputError, mimi.make_encode_state, 0, match="positive integer")


# ------------------------------------------------------------------------------------------ codes input


@pytest.mark.parametrize("codes, match", [
    (mx.zeros((4, 3), dtype=mx.int32), r"shape \[batch, codebooks, frames\]"),
    (mx.zeros((1, 4, 3)), "integers"),
    (mx.zeros((1, 0, 3), dtype=mx.int32), "codebooks on axis 1"),
    (mx.zeros((1, 5, 3), dtype=mx.int32), "1..4"),
    (mx.full((1, 4, 3), BINS, dtype=mx.int32), f"0..{BINS - 1}"),
    (mx.full((1, 4, 3), -1, dtype=mx.int32), f"0..{BINS - 1}"),
])
def test_decode_rejects_bad_codes(mimi, codes, match):
    _raises(MimiInputError, mimi.decode, codes, match=match)


def test_decode_step_rejects_several_frames(mimi):
    _raises(MimiInputError, mimi.decode_step, mx.zeros((1, 4, 2), dtype=mx.int32), mimi.make_decode_state(1),
            match="one frame")


# ------------------------------------------------------------------------------------------ loading


def test_missing_file(tmp_path):
    err = _raises(FileNotFoundError, load_mimi, tmp_path / "nope.safetensors", match="no such file")
    assert isinstance(err, MimiFileNotFoundError) and "nope.safetensors" in str(err)


def test_folder_without_checkpoint(tmp_path):
    _raises(MimiFileNotFoundError, load_mimi, tmp_path, match=MIMI_FILE)


def test_truncated_file(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    bad = tmp_path / MIMI_FILE
    bad.write_bytes(data[: len(data) - 1000])
    (tmp_path / "mimi_config.json").write_text(json.dumps(TINY))
    err = _raises(MimiLoadError, load_mimi, bad, match="truncated")
    assert str(bad) in str(err)


def test_garbage_file(tmp_path):
    bad = tmp_path / MIMI_FILE
    bad.write_bytes(b"this is not a checkpoint at all, just text")
    _raises(MimiLoadError, load_mimi, bad, match="not a safetensors file")


def test_foreign_checkpoint(tmp_path):
    bad = tmp_path / "model.safetensors"
    mx.save_safetensors(str(bad), {"text_emb.weight": mx.zeros((4, 4)), "out_norm.alpha": mx.zeros((1, 1, 4))})
    err = _raises(MimiLoadError, load_mimi, bad, match=r"tensors missing \(first: encoder\.model\.0\.conv")
    assert "is this a Mimi checkpoint?" in str(err)


def test_extra_tensors_are_rejected(checkpoint, tmp_path):
    tensors = dict(mx.load(str(checkpoint)))
    tensors["encoder.model.99.conv.conv.weight"] = mx.zeros((1,))
    mx.save_safetensors(str(tmp_path / MIMI_FILE), tensors)
    (tmp_path / "mimi_config.json").write_text(json.dumps(TINY))
    _raises(MimiLoadError, load_mimi, tmp_path, 4, match="1 unexpected tensors")


def test_config_that_does_not_fit_the_weights(checkpoint, tmp_path):
    bigger = json.loads(json.dumps(TINY))
    bigger["seanet"]["n_filters"] = 4
    (tmp_path / MIMI_FILE).write_bytes(checkpoint.read_bytes())
    (tmp_path / "mimi_config.json").write_text(json.dumps(bigger))
    _raises(MimiLoadError, load_mimi, tmp_path, 4, match=r"encoder\.model\.0\.conv\.conv\.weight has shape")


def test_published_preset_without_config_rejects_tiny_weights(checkpoint, tmp_path):
    (tmp_path / MIMI_FILE).write_bytes(checkpoint.read_bytes())
    _raises(MimiLoadError, load_mimi, tmp_path, match="published preset")


def test_bad_config_json(checkpoint, tmp_path):
    (tmp_path / MIMI_FILE).write_bytes(checkpoint.read_bytes())
    (tmp_path / "mimi_config.json").write_text("{not json")
    _raises(MimiConfigError, load_mimi, tmp_path, match="not readable JSON")
    unsupported = json.loads(json.dumps(TINY))
    unsupported["seanet"]["pad_mode"] = "reflect"
    (tmp_path / "mimi_config.json").write_text(json.dumps(unsupported))
    _raises(MimiConfigError, load_mimi, tmp_path, match="pad_mode='reflect' is not supported")


@pytest.mark.parametrize("k", [0, 5, 2.0])
def test_num_codebooks_out_of_range(checkpoint, k):
    _raises(MimiInputError, load_mimi, checkpoint, k, match="num_codebooks must be an integer in 1..4")


def test_dtype_option(checkpoint):
    half = load_mimi(checkpoint, num_codebooks=4, dtype=mx.bfloat16)
    assert half.dtype == mx.bfloat16
    assert half.decode(mx.zeros((1, 4, 2), dtype=mx.int32)).dtype == mx.float32
