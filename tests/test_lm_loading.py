"""Loading LM checkpoints and configs: layouts, presets, one-line errors."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from test_lm_common import TINY, fixture_dir

from moshi_mlx.lm import PRESETS, LmConfig, WeightsError, load_lm
from moshi_mlx.lm.transformer import embed


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_7b_preset_matches_kyutai_lm_kwargs():
    cfg = PRESETS["moshiko_7b"]
    assert (cfg.dim, cfg.num_layers, cfg.num_heads, cfg.context, cfg.text_card, cfg.card) == (
        4096, 32, 32, 3000, 32000, 2048)
    assert cfg.hidden == 11264 and cfg.depformer_hidden == 2816
    assert cfg.audio_delays == (0, 1, 1, 1, 1, 1, 1, 1) and cfg.max_delay == 1
    assert LmConfig.preset("moshika_7b") == cfg


def test_config_from_dict_ignores_unknown_keys_and_rejects_unsupported():
    cfg = LmConfig.from_dict(dict(TINY, some_future_key=1, conditioners=None))
    assert cfg.dim == TINY["dim"] and cfg.delays == tuple(TINY["delays"])
    for bad in ({"norm": "layer_norm"}, {"delays": [0, 1]}, {"layer_scale": 0.01}, {"context": 0}):
        with pytest.raises(ValueError) as err:
            LmConfig.from_dict(dict(TINY, **bad))
        _one_line(err)
    with pytest.raises(ValueError) as err:
        LmConfig.preset("nope")
    _one_line(err)


def test_config_beside_weights_is_used(tmp_path):
    src = fixture_dir()
    (tmp_path / "model.safetensors").symlink_to(src / "model.safetensors")
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    model = load_lm(tmp_path)
    assert model.config == LmConfig.from_json(src / "config.json")
    assert model.dtype == mx.bfloat16
    assert model.transformer.layers[0].norm1.weight.dtype == mx.float32  # norms run in float32


def test_config_as_dict_or_object():
    src = fixture_dir()
    data = json.loads((src / "config.json").read_text())
    for config in (data, LmConfig.from_dict(data)):
        model = load_lm(src / "mlx" / "model.safetensors", dtype=mx.float32, config=config)
        assert model.dtype == mx.float32


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_lm(tmp_path / "nope.safetensors")
    _one_line(err)
    with pytest.raises(FileNotFoundError) as err:
        load_lm(tmp_path)  # a folder without weights
    _one_line(err)


def test_truncated_file(tmp_path):
    data = (fixture_dir() / "model.safetensors").read_bytes()
    for name, content in (("truncated", data[: len(data) // 2]), ("garbage", b"not a safetensors file")):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(WeightsError) as err:
            load_lm(path, config=fixture_dir() / "config.json")
        _one_line(err)


def test_shapes_matching_no_config():
    # No config beside the MLX files: the 7B preset is tried and must be refused in one line.
    with pytest.raises(WeightsError) as err:
        load_lm(fixture_dir() / "mlx" / "model.q4.safetensors")
    assert "moshi_7b" in _one_line(err)
    wrong = dict(json.loads((fixture_dir() / "config.json").read_text()), dim=128)
    with pytest.raises(WeightsError) as err:
        load_lm(fixture_dir() / "model.safetensors", config=wrong)
    _one_line(err)


def test_quantized_embedding_maps_zero_token_to_zero():
    model = load_lm(fixture_dir() / "mlx" / "model.q4.safetensors", config=fixture_dir() / "config.json")
    rows = embed(model.emb, mx.array([[-1, 5]]))
    assert np.all(np.array(rows[0, 0].astype(mx.float32)) == 0)
    assert np.any(np.array(rows[0, 1].astype(mx.float32)) != 0)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    mx.save_safetensors(str(path), {"encoder.conv.weight": mx.zeros((2, 2))})
    with pytest.raises(WeightsError) as err:
        load_lm(path)
    assert "layout" in _one_line(err)
