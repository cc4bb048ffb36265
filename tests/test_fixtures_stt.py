"""The STT oracle itself (tests/fixtures/stt_tiny, written by tests/reference/stt_torch.py + stt_mlx.py) is
coherent: files in the published layouts, shapes that agree, and a token stream that exercises word timing.

Only the fixture is checked here: no moshi_mlx code runs.
"""

from __future__ import annotations

import json
import math

import mlx.core as mx
import numpy as np
import sentencepiece as spm

from conftest import fixture_dir, load_golden

FRAME = 1920
PAD, EPAD = 3, 0


def _cfg(sub: str = "") -> dict:
    return json.loads((fixture_dir("stt_tiny") / sub / "config.json").read_text())


def test_config_is_the_published_stt_schema():
    cfg = _cfg()
    assert cfg["model_type"] == "stt" and cfg["dep_q"] == 0 and cfg["n_q"] == 32
    assert cfg["delays"] == [0] * 33
    assert (cfg["extra_heads_num_heads"], cfg["extra_heads_dim"]) == (4, 6)
    assert cfg["stt_config"] == {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 1.0}
    mlx_cfg = _cfg("mlx")
    assert "extra_heads_num_heads" not in mlx_cfg and "extra_heads_dim" not in mlx_cfg
    assert {k: v for k, v in cfg.items() if not k.startswith("extra_heads_")} == mlx_cfg


def test_files_are_present_in_both_layouts():
    d = fixture_dir("stt_tiny")
    cfg = _cfg()
    for sub in ("", "mlx"):
        for name in (cfg["mimi_name"], "mimi_config.json", cfg["tokenizer_name"], "model.safetensors"):
            assert (d / sub / name).is_file(), f"{sub}/{name}"
    mimi_cfg = json.loads((d / "mimi_config.json").read_text())
    assert mimi_cfg["quantizer"]["n_q"] == 32 and mimi_cfg["quantizer"]["bins"] == cfg["card"]
    sp = spm.SentencePieceProcessor(model_file=str(d / cfg["tokenizer_name"]))
    assert sp.get_piece_size() == cfg["text_card"]
    assert (sp.unk_id(), sp.pad_id()) == (EPAD, PAD)


def test_mimi_is_mimi_tiny_with_shorter_codebooks():
    cfg = _cfg()
    ours = mx.load(str(fixture_dir("stt_tiny") / cfg["mimi_name"]))
    base = mx.load(str(fixture_dir("mimi_tiny") / "tokenizer-e351c8d8-checkpoint125.safetensors"))
    assert ours.keys() == base.keys()
    for key, value in ours.items():
        ref = base[key]
        if key.endswith(("_codebook.embedding_sum", "_codebook.cluster_usage")):
            assert value.shape[0] == cfg["card"]
            ref = ref[:cfg["card"]]
        assert mx.array_equal(value, ref).item(), key


def test_pytorch_file_is_the_candle_layout_with_extra_heads():
    cfg = _cfg()
    dim, n_layers = cfg["dim"], cfg["num_layers"]
    w = mx.load(str(fixture_dir("stt_tiny") / "model.safetensors"))
    assert all(v.dtype == mx.bfloat16 for v in w.values())
    for k in range(cfg["n_q"]):
        assert w[f"emb.{k}.weight"].shape == (cfg["card"] + 1, dim)
    assert w["text_emb.weight"].shape == (cfg["text_card"] + 1, dim)
    assert w["text_linear.weight"].shape == (cfg["text_card"], dim)
    assert w["out_norm.alpha"].shape == (1, 1, dim)
    assert w[f"transformer.layers.{n_layers - 1}.self_attn.in_proj_weight"].shape == (3 * dim, dim)
    for i in range(4):
        assert w[f"extra_heads.{i}.weight"].shape == (6, dim)
    assert not any(k.startswith(("depformer", "linears.")) for k in w)  # dep_q 0: no depformer at all


def test_mlx_files_have_no_extra_heads_and_quantize_every_layer():
    d = fixture_dir("stt_tiny") / "mlx"
    bf16 = mx.load(str(d / "model.safetensors"))
    assert "out_norm.weight" in bf16 and "audio_embs.31.weight" in bf16
    assert not any("extra_heads" in k or "depformer" in k for k in bf16)
    for name, bits, group in (("q8", 8, 64), ("q4", 4, 32)):
        q = mx.load(str(d / f"model.{name}.safetensors"))
        assert not any("extra_heads" in k for k in q)
        for prefix in ("transformer.layers.0.self_attn.in_proj", "transformer.layers.0.gating.linear_out",
                       "text_emb", "audio_embs.0", "text_linear"):
            w, s = q[prefix + ".weight"], q[prefix + ".scales"]
            assert w.dtype == mx.uint32 and prefix + ".biases" in q
            assert w.shape[-1] * 32 // bits // s.shape[-1] == group, prefix


def test_golden_shapes_and_dsm_padding():
    g = load_golden("stt_tiny")
    cfg = _cfg()
    prefix, suffix = int(g["prefix_frames"].reshape(-1)[0]), int(g["suffix_frames"].reshape(-1)[0])
    stt = cfg["stt_config"]
    assert prefix == math.ceil(stt["audio_silence_prefix_seconds"] * 12.5)
    assert suffix == math.ceil(stt["audio_delay_seconds"] * 12.5)
    pcm, padded = g["pcm"], g["padded_pcm"]
    assert pcm.dtype == padded.dtype == np.float32 and pcm.shape[-1] % FRAME != 0  # a partial last frame
    steps = prefix + math.ceil(pcm.shape[-1] / FRAME) + suffix
    assert padded.shape == (1, 1, steps * FRAME)
    np.testing.assert_array_equal(padded[..., prefix * FRAME:prefix * FRAME + pcm.shape[-1]], pcm)
    assert not padded[..., :prefix * FRAME].any() and not padded[..., prefix * FRAME + pcm.shape[-1]:].any()
    assert steps > 2 * cfg["context"]  # the attention window slides
    codes = g["codes"]
    assert codes.shape == (steps, 32) and codes.dtype == np.int32
    assert (codes >= 0).all() and (codes < cfg["card"]).all()
    audio = codes[prefix:steps - suffix]
    assert min(len(np.unique(c)) for c in audio.T) >= 10
    for run in ("torch_fp32", "torch_bf16"):
        assert g[f"{run}.text"].shape == (steps,) and g[f"{run}.text"].dtype == np.int32
        assert g[f"{run}.text_logits"].shape == (steps, cfg["text_card"])
        eot = g[f"{run}.eot"]
        assert eot.shape == (steps, 4, 6) and np.allclose(eot.sum(-1), 1, atol=2e-2)
    assert np.isfinite(g["torch_fp32.text_logits"]).all()
    np.testing.assert_array_equal(g["torch_fp32.text_logits"].argmax(-1), g["torch_fp32.text"])


def test_token_stream_looks_like_stt_output():
    """Mostly PAD, an EPAD before each word, words of 1-3 pieces, two words in one segment, a last word
    with no closing EPAD, and nothing during the silent prefix."""
    g = load_golden("stt_tiny")
    d = fixture_dir("stt_tiny")
    sp = spm.SentencePieceProcessor(model_file=str(d / _cfg()["tokenizer_name"]))
    text = g["torch_fp32.text"]
    prefix = int(g["prefix_frames"].reshape(-1)[0])
    assert (text == PAD).mean() > 0.5 and (text[:prefix] == PAD).all()
    bounds = np.nonzero(text == EPAD)[0]
    assert len(bounds) >= 4
    segments = [text[a + 1:b] for a, b in zip(bounds, list(bounds[1:]) + [len(text)])]
    words_per_segment = [sp.decode([int(t) for t in s if t > PAD]).split() for s in segments]
    assert all(words for words in words_per_segment)  # every EPAD opens a word
    assert any(len(words) == 2 for words in words_per_segment)
    assert (segments[-1][-1] == PAD) and EPAD not in segments[-1]  # the last word is never closed
    for s in segments:  # 1-3 pieces per word, right after its EPAD
        pieces = [t for t in s if t > PAD]
        assert s[0] > PAD and 1 <= len(pieces) <= 6
    assert len(sp.decode([int(t) for t in text if t > PAD]).split()) >= 6
