"""Inner-monologue decoding: pieces to words, padding as silence, times from frames."""

from __future__ import annotations

import pytest

from moshi_mlx.constants import FRAME_RATE, TEXT_EPAD, TEXT_PAD
from moshi_mlx.text import TextDecoder

spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A small real sentencepiece model trained offline, with byte fallback like Moshi's."""
    from tiny_model import train_tokenizer

    path = train_tokenizer(tmp_path_factory.mktemp("spm") / "m.model")
    return spm.SentencePieceProcessor(model_file=str(path))


def _ids(tok, text):
    return tok.encode(text)


def test_words_and_times_follow_the_frames_that_made_them(tokenizer):
    hello, world = _ids(tokenizer, "hello"), _ids(tokenizer, "world")
    # frame:  0    1    2..        then world's pieces, EPAD, pad
    seq = [TEXT_PAD, TEXT_EPAD] + hello + [TEXT_PAD, TEXT_PAD, TEXT_EPAD] + world + [TEXT_PAD]
    dec = TextDecoder(tokenizer)
    shown = [dec.push(t, f) for f, t in enumerate(seq)]
    words = dec.finish(len(seq))
    assert [w.text for w in words] == ["hello", "world"]
    assert "".join(s for s in shown if s) == "hello world"
    h0 = 2
    assert words[0].start_frame == h0 and words[0].end_frame == h0 + len(hello)
    w0 = h0 + len(hello) + 3
    assert words[1].start_frame == w0 and words[1].end_frame == w0 + len(world)
    assert words[1].start == pytest.approx(w0 / FRAME_RATE)


def test_back_to_back_words_and_unfinished_word(tokenizer):
    seq = _ids(tokenizer, "quick brown fox")
    dec = TextDecoder(tokenizer)
    shown = "".join(s for f, t in enumerate(seq) if (s := dec.push(t, f)))
    assert shown == "quick brown fox"
    assert [w.text for w in dec.words] == ["quick", "brown"]  # fox not known complete yet
    assert [w.text for w in dec.finish(len(seq))] == ["quick", "brown", "fox"]


def test_byte_fallback_characters_decode_whole(tokenizer):
    seq = _ids(tokenizer, "hello é")
    dec = TextDecoder(tokenizer)
    shown = "".join(s for f, t in enumerate(seq) if (s := dec.push(t, f)))
    assert [w.text for w in dec.finish(len(seq))] == ["hello", "é"]
    assert "é" in shown


def test_out_of_vocabulary_tokens_are_silence(tokenizer):
    dec = TextDecoder(tokenizer)
    assert dec.push(tokenizer.get_piece_size() + 5, 0) is None
    assert dec.finish(1) == []
