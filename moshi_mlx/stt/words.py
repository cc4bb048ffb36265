"""Word times from an STT model's text stream, by the rule of Kyutai's DSM scripts.

The text stream holds one token per 80 ms step: PAD (3) while nothing is said, EPAD (0) one step before a
word, then the word's sentencepiece pieces. A segment runs from the step after an EPAD to the next EPAD; its
text is its pieces with the specials (ids <= PAD) dropped. One word in a segment spans the segment; several
words (said so fast that no EPAD came between them) get one step per piece each, in order, and the last one
the rest of the segment. The last segment ends at the first end-of-sentence token after it, else one
second later or at the end of the stream, whichever comes first (DSM slices with a float there and crashes
past 12.5 steps; we round the second up to whole steps). Tokens before the first EPAD are dropped. Step s
is at `max(0, s / 12.5 - offset)` seconds, the offset removing the silent prefix and the model's delay.

`WordAligner` applies the rule as tokens arrive, so live captions and the final transcript agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..constants import FRAME_RATE, TEXT_EPAD, TEXT_PAD


@dataclass(frozen=True)
class TimedWord:
    """A word and its time span on the audio's timeline, in seconds."""

    word: str
    start: float
    end: float

    def to_dict(self) -> dict:
        return {"word": self.word, "start": round(self.start, 4), "end": round(self.end, 4)}


@dataclass
class WordAligner:
    """Turns text tokens, one per step, into timed words.

    Args:
        tokenizer: a `sentencepiece.SentencePieceProcessor` (`decode`, `encode`, `eos_id`).
        offset_seconds: subtracted from every time (silent prefix + the model's text delay).
        pad_id: the padding token; it and every id below it are not text.
        epad_id: the end-of-padding token that opens a word.
    """

    tokenizer: object
    offset_seconds: float
    pad_id: int = TEXT_PAD
    epad_id: int = TEXT_EPAD
    words: list[TimedWord] = field(default_factory=list)
    steps: int = 0
    _segment: list[int] | None = None  # tokens since the last EPAD (None before the first one)
    _start: int = 0

    def push(self, token: int) -> None:
        """Feeds the text token of the next step."""
        token = int(token)
        step = self.steps
        self.steps += 1
        if token == self.epad_id:
            if self._segment is not None:
                self.words.extend(self._segment_words(self._segment, self._start, step))
            self._segment, self._start = [], step + 1
        elif self._segment is not None:
            self._segment.append(token)

    def current(self) -> list[TimedWord]:
        """Finished words, then the words of the open segment as they stand (ending at the last step)."""
        if not self._segment:
            return list(self.words)
        return self.words + self._segment_words(self._segment, self._start, self.steps)

    def finish(self) -> list[TimedWord]:
        """Every word, the last segment closed by the end-of-stream rule (see the module docstring)."""
        words = list(self.words)
        if self._segment is not None:
            eos = self.tokenizer.eos_id()
            ends = [i for i, t in enumerate(self._segment) if t == eos]
            length = ends[0] if ends else min(len(self._segment), math.ceil(FRAME_RATE))
            words += self._segment_words(self._segment[:length], self._start, self._start + length)
        return words

    def time(self, step: int) -> float:
        return max(0.0, step / FRAME_RATE - self.offset_seconds)

    def _segment_words(self, tokens: list[int], start: int, end: int) -> list[TimedWord]:
        # A model's text card may exceed its tokenizer's vocabulary: such ids are not text either.
        size = self.tokenizer.get_piece_size()
        text = self.tokenizer.decode([t for t in tokens if self.pad_id < t < size])
        names = text.split()
        out = []
        for name in names[:-1]:
            pieces = len(self.tokenizer.encode(name))
            out.append(TimedWord(name, self.time(start), self.time(start + pieces)))
            start += pieces
        if names:
            out.append(TimedWord(names[-1], self.time(start), self.time(end)))
        return out


def words_from_tokens(tokens, tokenizer, offset_seconds: float, pad_id: int = TEXT_PAD,
                      epad_id: int = TEXT_EPAD) -> list[TimedWord]:
    """Timed words of a whole token stream (the same rule as feeding `WordAligner` step by step)."""
    aligner = WordAligner(tokenizer, offset_seconds, pad_id, epad_id)
    for token in tokens:
        aligner.push(token)
    return aligner.finish()
