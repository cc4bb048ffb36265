"""Text to the words the TTS model reads: Kyutai's script rules.

A script is a list of turns (the first is the main speaker's; Kyutai's models take up to two speakers).
Each word becomes an `Entry` holding its sentencepiece tokens; the first word of a turn is prefixed with
the speaker's token (main = 1, other = 2) when the model has several voices. `<break time="1.5s"/>`
inserts a pause: an entry with no tokens that forces that many steps of padding. `padding_between` > 0
forces at least that many padding steps after a word (plus one per extra token), which makes the model
articulate more clearly. Before splitting, ’ becomes ', : becomes a space, and parentheses are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..constants import FRAME_RATE

SPEAKER_TOKENS = (1, 2)
"""Tokens that open a turn of the main speaker, and of the other one."""

_EVENT = re.compile(r'(?:<break\s+time="([0-9]+(?:.[0-9]*)?)s"\s*/?>)|(?:\s+)')


@dataclass
class Entry:
    """One word to say (`tokens`, `text`), or a pause (no tokens); `padding` steps of padding follow it."""

    tokens: list[int]
    text: str
    padding: int = 0


@dataclass
class _Builder:
    tokenizer: object
    multi_speaker: bool
    padding_between: int
    entries: list[Entry] = field(default_factory=list)
    last_speaker: int | None = None

    def word(self, word: str, turn: int, first: bool) -> None:
        tokens = list(self.tokenizer.encode(word))
        if first:
            speaker = turn % len(SPEAKER_TOKENS)
            if self.multi_speaker and speaker != self.last_speaker:
                self.last_speaker = speaker
                tokens.insert(0, SPEAKER_TOKENS[speaker])
        padding = max(0, self.padding_between + len(tokens) - 1) if self.padding_between > 0 else 0
        self.entries.append(Entry(tokens, word, padding))


def script_entries(tokenizer, turns: list[str], multi_speaker: bool = True, padding_between: int = 0,
                   frame_rate: float = FRAME_RATE) -> list[Entry]:
    """The entries of a script (see the module docstring)."""
    b = _Builder(tokenizer, multi_speaker, padding_between)
    for turn, line in enumerate(turns):
        first = True
        line = line.replace("\u2019", "'").replace(":", " ").replace("(", "").replace(")", "")
        while line:
            match = _EVENT.search(line)
            if match is None:
                break
            word, line = line[:match.start()], line[match.end():]
            if word:
                b.word(word, turn, first)
                first = False
            if match.group(1):
                b.entries.append(Entry([], "", int(round(float(match.group(1)) * frame_rate))))
        if line:
            b.word(line, turn, first)
    return b.entries
