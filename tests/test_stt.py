"""Streaming speech-to-text: word times, the protocol, streaming == whole-file, loading and refusals.

Parity with Kyutai's PyTorch STT is in tests/test_stt_parity.py; these tests need no reference.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from moshi_mlx.constants import FRAME_SIZE
from moshi_mlx.stt import SttSettings, WordAligner, words_from_tokens
from tiny_model import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(train_tokenizer(tmp_path_factory.mktemp("spm") / "t.model")))


@pytest.fixture(scope="module")
def stt_checkpoint(tmp_path_factory):
    from moshi_mlx.demo_speech import build_stt_checkpoint as build_tiny_stt_checkpoint

    return build_tiny_stt_checkpoint(tmp_path_factory.mktemp("stt"))


def ids(tokenizer, word: str) -> list[int]:
    return tokenizer.encode(word)


# ------------------------------------------------------------------------------------------- word times


def test_words_follow_the_dsm_rule(tokenizer):
    hello, world, fox = ids(tokenizer, "hello"), ids(tokenizer, "world"), ids(tokenizer, "fox")
    # step: 0-1 junk before the first EPAD (dropped), EPAD at 2, "hello" from 3, PADs, EPAD at 9,
    # "world" + "fox" in one segment from 10, EPAD at 20, a last "fox" from 21 with no closing EPAD.
    tokens = [hello[0], 3, 0] + hello + [3] * (6 - len(hello)) + [0] + world + fox
    tokens += [3] * (10 - len(world) - len(fox)) + [0] + fox + [3] * 4
    words = words_from_tokens(tokens, tokenizer, offset_seconds=0.1)
    assert [w.word for w in words] == ["hello", "world", "fox", "fox"]
    t = lambda step: max(0.0, step / 12.5 - 0.1)  # noqa: E731
    assert (words[0].start, words[0].end) == (t(3), t(9))
    # Two words in one segment: the first gets one step per piece, the last the rest.
    assert (words[1].start, words[1].end) == (t(10), t(10 + len(world)))
    assert (words[2].start, words[2].end) == (t(10 + len(world)), t(20))
    # The last segment runs to the end of the stream (shorter than a second here).
    assert (words[3].start, words[3].end) == (t(21), t(len(tokens)))


def test_last_word_ends_at_eos_or_after_a_second(tokenizer):
    fox = ids(tokenizer, "fox")
    closed = [0] + fox + [3, tokenizer.eos_id()] + [3] * 30
    w = words_from_tokens(closed, tokenizer, 0.0)
    assert [(x.word, x.start, x.end) for x in w] == [("fox", 1 / 12.5, (1 + len(fox) + 1) / 12.5)]
    # No end token and a long tail: DSM's own code crashes here (a float slice); we end after 13 steps.
    open_ended = [0] + fox + [3] * 40
    w = words_from_tokens(open_ended, tokenizer, 0.0)
    assert (w[0].start, w[0].end) == (1 / 12.5, 14 / 12.5)


def test_times_are_clamped_at_zero_and_nothing_before_the_first_epad(tokenizer):
    assert words_from_tokens(ids(tokenizer, "hello world") + [3] * 5, tokenizer, 0.0) == []
    w = words_from_tokens([0] + ids(tokenizer, "hello") + [0], tokenizer, offset_seconds=5.0)
    assert (w[0].start, w[0].end) == (0.0, 0.0)


def test_live_words_match_the_final_ones(tokenizer):
    rng = np.random.default_rng(0)
    pieces = ids(tokenizer, "the quick brown fox jumps over lazy dogs")
    tokens = [int(rng.choice([0, 3, 3, 3] + pieces)) for _ in range(200)]
    aligner = WordAligner(tokenizer, 1.5)
    for i, token in enumerate(tokens):
        aligner.push(token)
        live = aligner.current()
        # Closed segments never change afterwards: every finished word is a prefix of the final list.
        assert live[:len(aligner.words)] == aligner.words
    assert aligner.finish() == words_from_tokens(tokens, tokenizer, 1.5)


# ------------------------------------------------------------------------------------------- protocol


def test_settings_from_the_published_config():
    from moshi_mlx.lm import LmConfig
    from moshi_mlx.demo_speech import stt_config

    raw = stt_config()
    s = SttSettings.from_config(raw, LmConfig.from_dict(raw))
    assert (s.prefix_frames, s.flush_frames, s.offset_seconds, s.pad_id) == (13, 7, 1.5, 3)
    raw["stt_config"] = {"audio_delay_seconds": 2.5, "audio_silence_prefix_seconds": 1.0}
    assert SttSettings.from_config(raw, LmConfig.from_dict(raw)).flush_frames == 32


def test_settings_refuse_what_is_not_stt():
    from moshi_mlx.lm import LmConfig
    from moshi_mlx.stt import NotAnSttModel
    from moshi_mlx.demo_speech import stt_config

    with pytest.raises(NotAnSttModel, match="dep_q=8"):
        SttSettings.from_config({}, LmConfig())
    raw = stt_config()
    del raw["stt_config"]
    with pytest.raises(NotAnSttModel, match="no stt_config"):
        SttSettings.from_config(raw, LmConfig.from_dict(raw))


def test_transcribe_equals_streaming_frame_by_frame(stt_checkpoint):
    import moshi_mlx

    model = moshi_mlx.load(stt_checkpoint)
    stt = model.transcriber(seed=0)
    rng = np.random.default_rng(1)
    pcm = (0.3 * rng.standard_normal(37 * FRAME_SIZE + 500)).astype(np.float32)  # a partial last frame
    whole = stt.transcribe(pcm)
    s = stt.settings
    frames = -(-len(pcm) // FRAME_SIZE)
    assert len(whole.tokens) == s.prefix_frames + frames + s.flush_frames
    assert len(whole.end_of_turn) == len(whole.tokens)
    assert whole.audio_seconds == pytest.approx(frames * 0.08)
    assert {0, 3} <= set(whole.tokens) and max(whole.tokens) > 3  # the tilted head writes words
    stt.reset()
    padded = np.zeros(frames * FRAME_SIZE, dtype=np.float32)
    padded[:len(pcm)] = pcm
    for f in range(frames):
        words, eot = stt.step(padded[f * FRAME_SIZE:(f + 1) * FRAME_SIZE])
        assert 0.0 <= eot <= 1.0
    live = stt.finish()
    assert live.tokens == whole.tokens
    np.testing.assert_allclose(live.end_of_turn, whole.end_of_turn, atol=1e-6)
    assert live.words == whole.words and live.text == whole.text and whole.words


def test_model_without_heads_has_no_end_of_turn(tmp_path):
    import moshi_mlx
    from moshi_mlx.demo_speech import build_stt_checkpoint as build_tiny_stt_checkpoint

    stt = moshi_mlx.load(build_tiny_stt_checkpoint(tmp_path / "m", heads=False)).transcriber(seed=0)
    t = stt.transcribe(np.zeros(FRAME_SIZE * 3, dtype=np.float32))
    assert t.end_of_turn is None and "end_of_turn" not in t.to_dict()
    words, eot = stt.step(np.zeros(FRAME_SIZE, dtype=np.float32))
    assert eot is None


# ------------------------------------------------------------------------------------------- refusals


def test_a_moshi_checkpoint_is_refused_before_its_weights_are_read(tiny_checkpoint, tmp_path):
    from moshi_mlx.loading import LoadError, load

    broken = tmp_path / "moshi"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 64)  # reading it would fail differently
    with pytest.raises(LoadError, match="not a speech-to-text model: it generates speech"):
        load(broken, kind="stt")


def test_a_missing_tokenizer_is_an_error(stt_checkpoint, tmp_path):
    from moshi_mlx.loading import LoadError, load

    folder = tmp_path / "no_tok"
    shutil.copytree(stt_checkpoint, folder)
    name = json.loads((folder / "config.json").read_text())["tokenizer_name"]
    (folder / name).unlink()
    with pytest.raises(LoadError, match="tokenizer is missing"):
        load(folder, kind="stt").transcriber()


def test_heads_missing_from_the_weights_are_named(stt_checkpoint, tmp_path):
    from moshi_mlx.loading import LoadError, load

    folder = tmp_path / "no_heads"
    shutil.copytree(stt_checkpoint, folder)
    import mlx.core as mx

    w = mx.load(str(folder / "model.safetensors"))
    mx.save_safetensors(str(folder / "model.safetensors"), {k: v for k, v in w.items() if "extra_heads" not in k})
    with pytest.raises(LoadError, match="0 extra heads, the config says extra_heads_num_heads=4"):
        load(folder)


def test_batch_transcription_equals_one_at_a_time(stt_checkpoint):
    import moshi_mlx

    stt = moshi_mlx.load(stt_checkpoint, dtype="fp32").transcriber(seed=0)
    rng = np.random.default_rng(5)
    pcms = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (20 * FRAME_SIZE, 33 * FRAME_SIZE + 7, 5)]
    together = stt.transcribe_batch(pcms)
    for pcm, t in zip(pcms, together):
        alone = stt.transcribe(pcm)
        assert t.tokens == alone.tokens and t.words == alone.words and t.audio_seconds == alone.audio_seconds
        np.testing.assert_allclose(t.end_of_turn, alone.end_of_turn, atol=1e-5)
