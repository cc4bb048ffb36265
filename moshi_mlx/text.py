"""Moshi's inner monologue, from text tokens to words with times.

Moshi emits one text token per 80 ms step: mostly padding (PAD between words, EPAD just before a word
starts) and now and then a sentencepiece piece. Pieces that start with "▁" open a new word; a word is
complete when padding or the next word arrives. Pieces are decoded per word with sentencepiece itself,
so byte-fallback pieces and multi-piece words come out right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import FRAME_RATE, TEXT_EPAD, TEXT_PAD

_WORD_START = "\u2581"  # sentencepiece's word-boundary marker


@dataclass
class Word:
    """A finished word: `start` is when its first piece was produced, `end` when it was known complete."""

    text: str
    start: float
    end: float
    start_frame: int
    end_frame: int


@dataclass
class TextDecoder:
    """Turns the step-by-step text tokens into display pieces and timed words.

    Args:
        tokenizer: a `sentencepiece.SentencePieceProcessor` (anything with `id_to_piece`, `decode` and
            `get_piece_size`).
        padding_ids: tokens that are silence, not text.
    """

    tokenizer: object
    padding_ids: frozenset = frozenset({TEXT_PAD, TEXT_EPAD})
    words: list[Word] = field(default_factory=list)
    _ids: list[int] = field(default_factory=list)
    _shown: str = ""
    _start: int = 0

    def push(self, token: int, frame: int) -> str | None:
        """Feeds the text token produced at `frame`; returns the text to show now, if any."""
        token = int(token)
        if token in self.padding_ids or not 0 <= token < self.tokenizer.get_piece_size():
            self._close(frame)
            return None
        piece = self.tokenizer.id_to_piece(token)
        new_word = piece.startswith(_WORD_START)
        if new_word:
            self._close(frame)
        if not self._ids:
            self._start = frame
        self._ids.append(token)
        text = self.tokenizer.decode(self._ids)
        # Usually the text only grows; when bytes complete a character it may rewrite its tail.
        shown = text[len(self._shown):] if text.startswith(self._shown) else text
        self._shown = text
        if new_word and self.words and len(self._ids) == 1:
            shown = " " + shown
        return shown or None

    def finish(self, frame: int) -> list[Word]:
        """Closes the word in progress at `frame` (end of stream); returns every word."""
        self._close(frame)
        return self.words

    def _close(self, frame: int) -> None:
        if not self._ids:
            return
        text = self.tokenizer.decode(self._ids).strip()
        if text:
            self.words.append(Word(text, self._start / FRAME_RATE, frame / FRAME_RATE, self._start, frame))
        self._ids, self._shown = [], ""
