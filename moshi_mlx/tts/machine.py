"""The TTS state machine: the model says when the next word starts; the machine feeds its tokens.

At every step the model samples a text token, of which only two values matter: NEW_WORD (0, "the next
word starts now") and PAD (3). The machine overrules the model while a word's tokens are still being fed
(one per step), while padding is forced (after a word or a break), and when the model has padded for too
long (`max_padding` steps in a row). On NEW_WORD it takes the next entry and queues its tokens; with no
entry left, the end step is recorded. It returns the token to feed at the next step. With a second text
stream (`second_stream_ahead`, Kyutai's 1.6B), NEW_WORD goes on that stream, which otherwise carries the
tokens of the word `second_stream_ahead` entries ahead, and the two are multiplexed into one id:
`(second + 1) * card + main`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .script import Entry

NEW_WORD, PAD, ZERO = 0, 3, -1


@dataclass
class MachineState:
    """One utterance in progress. `transcript` holds `(word, step)` for each word at the step it began."""

    entries: deque
    remaining_padding: int
    forced_padding: int
    queued: deque = field(default_factory=deque)
    lookahead: deque = field(default_factory=deque)
    end_step: int | None = None
    consumption_steps: list[int] = field(default_factory=list)
    transcript: list[tuple[str, int]] = field(default_factory=list)

    def tokens_ahead(self, n: int) -> list[int]:
        """Tokens of the n-th entry ahead that has tokens (breaks do not count)."""
        for entry in self.entries:
            if entry.tokens:
                n -= 1
                if n == 0:
                    return entry.tokens
        return []


@dataclass(frozen=True)
class StateMachine:
    """The rules; `card` is the text card plus one (the multiplexing base)."""

    card: int
    second_stream_ahead: int = 0
    max_padding: int = 8
    initial_padding: int = 2

    def new_state(self, entries: list[Entry]) -> MachineState:
        return MachineState(deque(entries), self.initial_padding, self.initial_padding)

    def process(self, step: int, state: MachineState, token: int) -> int:
        """The text token to feed after the model sampled `token` at `step` (updates `state`)."""
        if token not in (NEW_WORD, PAD):
            token = PAD
        if state.queued or state.forced_padding > 0:
            token = PAD
        elif state.remaining_padding <= 0:
            token = NEW_WORD
        if token == NEW_WORD:
            token = self._next_word(step, state)
        if token == PAD:
            state.remaining_padding = max(0, state.remaining_padding - 1)
            state.forced_padding = max(0, state.forced_padding - 1)
            out = state.queued.popleft() if state.queued else PAD
        else:
            out = NEW_WORD
        if not self.second_stream_ahead:
            return out
        second = -1
        if out == NEW_WORD:
            # The word marker moves to the second stream; the main one goes on with the word's tokens.
            second = NEW_WORD
            out = state.queued.popleft() if state.queued else PAD
        elif state.lookahead:
            second = state.lookahead.popleft()
        return (second + 1) * self.card + out

    def _next_word(self, step: int, state: MachineState) -> int:
        """Handles a NEW_WORD: returns the token it stands for (NEW_WORD, or PAD for a break / the end)."""
        if not state.entries:
            if state.end_step is None:
                state.end_step = step
                # With a second stream the marker still goes out once, announcing the end.
                return NEW_WORD if self.second_stream_ahead else PAD
            return PAD
        entry = state.entries.popleft()
        state.consumption_steps.append(step)
        state.forced_padding = entry.padding
        if not entry.tokens:
            return PAD  # a break: only its padding
        state.transcript.append((entry.text, step))
        state.queued.extend(entry.tokens)
        if self.second_stream_ahead:
            state.lookahead.extend(state.tokens_ahead(self.second_stream_ahead))
        state.remaining_padding = self.max_padding
        return NEW_WORD
