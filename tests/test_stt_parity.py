"""Parity of our STT path with Kyutai's PyTorch STT (`moshi==0.2.13`) on random weights in the published
layouts (tests/fixtures/stt_tiny: the candle layout with the end-of-turn heads, and Kyutai's MLX layout
in bf16/q8/q4 without them). The golden input runs past the model's context window (64 steps, context 24).

The goldens follow the trained alignment (the frame given at step t is seen at step t+1): PyTorch's
LMGen was fed its first frame twice (tests/reference/stt_torch.py).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conftest import fixture_dir, load_golden
from moshi_mlx.stt import words_from_tokens

# Kyutai's DSM `tokens_to_timestamped_text` on torch_fp32.text (offset 1.5 s), run by the fixture's author.
DSM_WORDS = [("world", 0.18, 0.42), ("text", 0.50, 0.98), ("world", 1.06, 1.46), ("talking", 1.54, 1.70),
             ("moshi", 1.70, 2.58), ("text", 2.66, 2.74), ("text", 2.82, 2.90), ("world", 2.98, 3.62)]


@pytest.fixture(scope="module")
def golden():
    return load_golden("stt_tiny")


def run_lm(model, codes: np.ndarray, logits: bool = False):
    """Greedy text tokens, end-of-turn probabilities and (optionally) text logits, one step per frame."""
    from moshi_mlx.lm import Generator

    gen = Generator(model, text_temp=0.0, seed=0)
    tokens, heads, text_logits = [], [], []
    for frame in codes:
        if logits:
            t, _, (tl, _) = gen.step(frame[None], return_logits=True)
            text_logits.append(tl[0])
        else:
            t, _, probs = gen.step_with_extra_heads(frame[None])
            heads.append(probs[0])
        tokens.append(int(t[0]))
    return np.array(tokens), (np.stack(heads) if heads else None), (np.stack(text_logits) if logits else None)


def test_fp32_greedy_tokens_and_end_of_turn_match_pytorch(golden):
    from moshi_mlx.lm import load_lm

    model = load_lm(fixture_dir("stt_tiny"), dtype=mx.float32)
    assert model.config.dep_q == 0 and model.config.context < len(golden["codes"])
    tokens, eot, _ = run_lm(model, golden["codes"])
    np.testing.assert_array_equal(tokens, golden["torch_fp32.text"])
    np.testing.assert_allclose(eot, golden["torch_fp32.eot"], atol=1e-4)
    _, _, logits = run_lm(model, golden["codes"], logits=True)
    np.testing.assert_allclose(logits, golden["torch_fp32.text_logits"], atol=1e-4, rtol=1e-4)


def test_the_whole_chain_matches_pytorch(golden):
    """Audio in (a clip that ends mid-frame), DSM protocol, our Mimi, our LM: PyTorch's tokens out."""
    import moshi_mlx

    model = moshi_mlx.load(fixture_dir("stt_tiny"), dtype=mx.float32)
    stt = model.transcriber()
    transcript = stt.transcribe(golden["pcm"][0, 0])
    assert (stt.settings.prefix_frames, stt.settings.flush_frames) == (int(golden["prefix_frames"][0]),
                                                                       int(golden["suffix_frames"][0]))
    np.testing.assert_array_equal(transcript.tokens, golden["torch_fp32.text"])
    np.testing.assert_allclose(transcript.end_of_turn, golden["torch_fp32.eot"][:, 2, 0], atol=1e-4)
    assert [(w.word, round(w.start, 2), round(w.end, 2)) for w in transcript.words] == DSM_WORDS


def test_our_codes_equal_pytorch_mimi_on_the_padded_input(golden):
    from moshi_mlx.mimi import load_mimi

    mimi = load_mimi(fixture_dir("stt_tiny") / "mimi-pytorch-e351c8d8@125.safetensors", num_codebooks=32)
    codes = mimi.encode(mx.array(golden["padded_pcm"]))
    np.testing.assert_array_equal(np.array(codes)[0].T, golden["codes"])


def test_word_times_equal_dsm(golden):
    import sentencepiece as spm

    tok = spm.SentencePieceProcessor(model_file=str(fixture_dir("stt_tiny") / "tokenizer_tiny_bpe_88.model"))
    words = words_from_tokens(golden["torch_fp32.text"], tok, offset_seconds=1.5)
    assert [(w.word, round(w.start, 2), round(w.end, 2)) for w in words] == DSM_WORDS


@pytest.mark.parametrize("name", ["model.safetensors", "model.q8.safetensors", "model.q4.safetensors"])
def test_mlx_layout_files_load_with_no_flag(golden, name, capsys):
    """Kyutai's MLX layout (no extra heads), bf16/q8/q4 told apart from the tensors; teacher-forced agreement
    of the text argmax with PyTorch fp32 is printed (for the note) and must stay high."""
    from moshi_mlx.lm import load_lm

    model = load_lm(fixture_dir("stt_tiny") / "mlx" / name)
    assert not model.extra_heads
    from moshi_mlx.lm import Generator

    gen = Generator(model, text_temp=0.0, seed=0)
    ref = golden["torch_fp32.text"]
    agree = 0
    for frame, forced in zip(golden["codes"], ref):
        t, _, (logits, _) = gen.step(frame[None], text=np.array([forced]), return_logits=True)
        agree += int(np.argmax(logits[0]) == forced)
    rate = agree / len(ref)
    with capsys.disabled():
        print(f"\nSTT {name}: teacher-forced text argmax agreement with PyTorch fp32 {agree}/{len(ref)}")
    assert rate >= {"model.safetensors": 0.95, "model.q8.safetensors": 0.9, "model.q4.safetensors": 0.75}[name]


def test_bf16_candle_file_matches_pytorch_bf16(golden):
    from moshi_mlx.lm import load_lm

    tokens, eot, _ = run_lm(load_lm(fixture_dir("stt_tiny")), golden["codes"])
    agree = float(np.mean(tokens == golden["torch_bf16.text"]))
    assert agree >= 0.9, (tokens, golden["torch_bf16.text"])
    np.testing.assert_allclose(eot, golden["torch_bf16.eot"], atol=0.05)


@pytest.mark.parametrize("quant", [None, "q8", "q4"])
def test_converter_writes_what_kyutai_wrote(golden, tmp_path, quant):
    """The candle file through moshi-mlx-convert: the tensors Kyutai's moshi_mlx wrote (bit for bit, quantized
    alike), plus the end-of-turn heads kept float; the result transcribes as PyTorch does."""
    from convert.pipeline import Options, run
    from moshi_mlx.lm import load_lm

    out = tmp_path / "out"
    result = run(Options(str(fixture_dir("stt_tiny")), out, quantize=quant))
    ours = mx.load(str(result.weights))
    theirs = mx.load(str(fixture_dir("stt_tiny") / "mlx" / result.weights.name))
    assert set(ours) - set(theirs) == {f"extra_heads.{i}.weight" for i in range(4)}
    for key, value in theirs.items():
        assert mx.array_equal(ours[key], value), key
    if quant is None:
        tokens, eot, _ = run_lm(load_lm(out, dtype=mx.float32), golden["codes"])
        np.testing.assert_array_equal(tokens, golden["torch_fp32.text"])
