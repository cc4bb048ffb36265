"""Parity of our TTS with Kyutai's PyTorch `TTSModel.generate` (`moshi==0.2.13`) on random weights in the
published layout (tests/fixtures/tts_tiny): fp32, greedy, a two-sentence script with a break, both with
the distilled `cfg` condition and with real classifier-free guidance (null conditions, coefficient 2)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conftest import fixture_dir, load_golden

VOICE = "tiny_voice.wav.7e57da7a@12.safetensors"


@pytest.fixture(scope="module")
def golden():
    return load_golden("tts_tiny")


def speak(golden, run: str):
    import moshi_mlx

    folder = fixture_dir("tts_tiny") / ("real_cfg" if run == "real_cfg" else "")
    model = moshi_mlx.load(folder, dtype=mx.float32, kind="tts")
    speaker = model.speaker(voice=folder / VOICE, cfg=2.0, temp=0.0, seed=0)
    return speaker, speaker.synthesize(str(golden["script"][0]))


def test_script_entries_equal_prepare_script(golden):
    import moshi_mlx

    speaker = moshi_mlx.load(fixture_dir("tts_tiny"), kind="tts").speaker(voice=fixture_dir("tts_tiny") / VOICE)
    entries = speaker.entries(str(golden["script"][0]))
    assert [len(e.tokens) for e in entries] == golden["entries.lengths"].tolist()
    assert [t for e in entries for t in e.tokens] == golden["entries.tokens"].tolist()
    assert [e.padding for e in entries] == golden["entries.padding"].tolist()


@pytest.mark.parametrize("run", ["distilled", "real_cfg"])
def test_fp32_greedy_generation_matches_pytorch(golden, run):
    speaker, speech = speak(golden, run)
    assert speaker.real_cfg == (2.0 if run == "real_cfg" else None)
    np.testing.assert_array_equal(speech.text_tokens, golden[f"{run}.text"])
    np.testing.assert_array_equal(speech.audio_codes, golden[f"{run}.frames"][:, 1:])
    assert speech.end_step == int(golden[f"{run}.end_step"][0])
    assert speech.consumption_steps == golden[f"{run}.consumption_times"].tolist()
    assert [w for w, _, _ in speech.words] == [str(w) for w in golden[f"{run}.words"]]
    np.testing.assert_allclose([s for _, s, _ in speech.words], golden[f"{run}.word_steps"] / 12.5)
    ref = golden[f"{run}.pcm"][0]
    assert speech.pcm.shape == ref.shape
    np.testing.assert_allclose(np.clip(speech.pcm, -1, 1), ref, atol=1e-3)


def test_conditions_match_pytorch(golden):
    """The summed conditions (distilled: cfg "2.0" + control; real CFG: conditioned and null rows) and the
    cross-attention source (the voice in slot 0 of 5, learnt padding elsewhere, position embedding)."""
    from moshi_mlx.tts import load_voice, speaker_condition

    distilled, _ = speak(golden, "distilled")
    np.testing.assert_allclose(np.array(distilled._conditions[0]), golden["distilled.cond_sum"], atol=1e-5)
    real, _ = speak(golden, "real_cfg")
    np.testing.assert_allclose(np.array(real._conditions[0]), golden["real_cfg.cond_sum"], atol=1e-5)
    provider = distilled.lm.condition_provider
    voice = load_voice(fixture_dir("tts_tiny") / VOICE)
    _, cross = provider.fuse({"cfg": ["2.0"], "control": ["ok"]},
                             {"speaker_wavs": speaker_condition([voice], 512)})
    np.testing.assert_allclose(np.array(cross), golden["distilled.cond_cross"], atol=1e-4)


def test_converted_checkpoint_generates_the_same(golden, tmp_path):
    """moshi-mlx-convert of the PyTorch file to Kyutai's MLX layout (the depformer slices copied per step)
    loads back with the slices of one weight set sharing arrays, and generates exactly as PyTorch."""
    import shutil

    import moshi_mlx
    from convert.pipeline import Options, run

    out = tmp_path / "mlx"
    run(Options(str(fixture_dir("tts_tiny")), out))
    shutil.copy(fixture_dir("tts_tiny") / VOICE, out / VOICE)
    model = moshi_mlx.load(out, dtype=mx.float32, kind="tts")
    slices = model.lm.depformer.slices
    assert slices[8].transformer.layers[0].gating.linear_in.weight is \
        slices[15].transformer.layers[0].gating.linear_in.weight  # schedule [0..7] + [8] * 8 + ...
    speech = model.speaker(voice=out / VOICE, cfg=2.0, temp=0.0).synthesize(str(golden["script"][0]))
    np.testing.assert_array_equal(speech.text_tokens, golden["distilled.text"])
    np.testing.assert_array_equal(speech.audio_codes, golden["distilled.frames"][:, 1:])


@pytest.mark.parametrize("quant", ["q8", "q4"])
def test_quantized_conversions_load_with_no_flag(tmp_path, quant):
    """q8/q4 of a TTS model (the tiny builder's widths fit groups of 32) load from the tensors alone and
    speak; teacher-forced agreement with the float model is what the note reports."""
    import shutil

    import moshi_mlx
    from convert.pipeline import Options, run
    from moshi_mlx.demo_speech import build_tts_checkpoint as build_tiny_tts_checkpoint, voice_file_name

    src = build_tiny_tts_checkpoint(tmp_path / "src")
    out = tmp_path / quant
    run(Options(str(src), out, quantize=quant, group_size=32))
    (out / voice_file_name()).parent.mkdir(parents=True)
    shutil.copy(src / voice_file_name(), out / voice_file_name())
    model = moshi_mlx.load(out, kind="tts")
    speech = model.speaker(voice=out / voice_file_name(), temp=0.0, seed=0).synthesize("hello world")
    assert [w for w, _, _ in speech.words] == ["hello", "world"] and len(speech.pcm) > 0
