"""Timed words to SubRip (.srt) subtitles: short cues, cut at pauses and ends of turn."""

from __future__ import annotations

MAX_CUE_CHARS = 42
"""A cue is at most one line of this many characters (a common subtitle guideline)."""
MAX_CUE_SECONDS = 6.0
PAUSE_SECONDS = 0.8
"""A silence this long between two words starts a new cue."""


def cues(words, turn_ends: set[int] = frozenset()) -> list[tuple[float, float, str]]:
    """Groups words (`.word`, `.start`, `.end`) into `(start, end, text)` cues; a cue also ends after
    every word index in `turn_ends`."""
    out: list[tuple[float, float, str]] = []
    current: list = []
    for i, w in enumerate(words):
        if current:
            text = " ".join(x.word for x in current + [w])
            if (len(text) > MAX_CUE_CHARS or w.end - current[0].start > MAX_CUE_SECONDS
                    or w.start - current[-1].end > PAUSE_SECONDS):
                out.append(_cue(current))
                current = []
        current.append(w)
        if i in turn_ends:
            out.append(_cue(current))
            current = []
    if current:
        out.append(_cue(current))
    return out


def to_srt(words, turn_ends: set[int] = frozenset()) -> str:
    """The SubRip text of `words` (empty when there are none)."""
    blocks = []
    for n, (start, end, text) in enumerate(cues(words, turn_ends), 1):
        end = max(end, start + 0.001)  # a zero-length cue is dropped by some players
        blocks.append(f"{n}\n{_time(start)} --> {_time(end)}\n{text}\n")
    return "\n".join(blocks)


def _cue(words) -> tuple[float, float, str]:
    return words[0].start, words[-1].end, " ".join(w.word for w in words)


def _time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"
