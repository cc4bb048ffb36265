"""Streaming speech-to-text with Kyutai's STT models (the "delayed streams" LM with no depth transformer).

    model = moshi_mlx.load("kyutai/stt-1b-en_fr-candle")
    stt = model.transcriber()
    transcript = stt.transcribe(pcm)               # a whole recording, float32 mono 24 kHz
    for frame in microphone_frames:                # or live, 1920 samples at a time
        words, end_of_turn = stt.step(frame)
    transcript = stt.finish()

Alignment is the trained one (as `LMModel.forward`, moshi_mlx and our Moshi generator): the audio frame
given at step t is seen by the model at step t+1, and step 0 sees the initial tokens. (Kyutai's PyTorch
`LMGen` shows frame t at step t and never frame 0; `moshi.run_inference` makes up for it by feeding its
first frame twice, which gives this alignment.) Each stream starts with the model's silent prefix and
ends with enough silence to flush its delay (`SttSettings`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..constants import DEFAULT_TEXT_TOP_K, FRAME_SIZE, SAMPLE_RATE
from ..lm.generate import Generator
from ..text import TextDecoder
from .settings import END_OF_TURN_HEAD, SttSettings
from .words import TimedWord, WordAligner, words_from_tokens

ENCODE_CHUNK_FRAMES = 64
"""Frames encoded per batch call in `transcribe` (bounds memory; the codes do not depend on it)."""


@dataclass
class Transcript:
    """What an STT run produced. `tokens` holds the text token of every step, the silent prefix and flush
    steps included, from the first step; `end_of_turn` the end-of-turn probability of every step (None for a
    model without the extra heads)."""

    text: str
    words: list[TimedWord]
    tokens: list[int]
    end_of_turn: list[float] | None
    model: str
    audio_seconds: float

    def to_dict(self) -> dict:
        out = {"text": self.text, "words": [w.to_dict() for w in self.words], "tokens": list(self.tokens)}
        if self.end_of_turn is not None:
            out["end_of_turn"] = [round(p, 6) for p in self.end_of_turn]
        out["model"] = self.model
        out["audio_seconds"] = round(self.audio_seconds, 4)
        return out


class Transcriber:
    """Runs an STT model over audio, one 80 ms frame per step.

    Args:
        lm: A text-only LM (`dep_q` 0) from `moshi_mlx.lm.load_lm`.
        mimi: The codec, with at least the LM's `n_q` codebooks.
        tokenizer: The model's sentencepiece tokenizer (required: the words are its pieces).
        settings: The checkpoint's protocol (`SttSettings.from_config`).
        temp: Text sampling temperature; 0 (the default, as Kyutai runs STT) is greedy.
        top_k: Text top-k when sampling.
        seed: Sampling seed (None: from the OS).
        model_name: Recorded in transcripts.
    """

    def __init__(self, lm, mimi, tokenizer, settings: SttSettings, *, temp: float = 0.0,
                 top_k: int = DEFAULT_TEXT_TOP_K, seed: int | None = None, model_name: str = ""):
        cfg = lm.config
        if cfg.dep_q:
            raise ValueError(f"the LM generates audio (dep_q={cfg.dep_q}); a Transcriber needs an STT model")
        if mimi.num_codebooks < cfg.n_q:
            raise ValueError(f"the codec gives {mimi.num_codebooks} codebooks, the model reads {cfg.n_q}")
        if tokenizer is None:
            raise ValueError("an STT model needs its text tokenizer")
        self.lm, self.mimi, self.tokenizer, self.settings = lm, mimi, tokenizer, settings
        self.temp, self.top_k, self.model_name = float(temp), int(top_k), model_name
        self.has_end_of_turn = cfg.extra_heads_num_heads > END_OF_TURN_HEAD
        self.seed = seed
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Starts a new stream (fresh codec and LM state, no words), sampling from `seed` or the
        transcriber's own."""
        seed = self.seed if seed is None else seed
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        self.generator = Generator(self.lm, text_temp=self.temp, text_top_k=self.top_k, audio_temp=0.0, seed=seed)
        self.encode_state = self.mimi.make_encode_state(1)
        self.aligner = WordAligner(self.tokenizer, self.settings.offset_seconds, self.settings.pad_id,
                                   self.settings.epad_id)
        self.display = TextDecoder(self.tokenizer, frozenset(range(self.settings.pad_id + 1)))
        self.tokens: list[int] = []
        self.end_of_turn: list[float] = []
        self.audio_frames = 0
        self._started = False
        self._shown: str | None = None

    # ----------------------------------------------------------------- live

    def step(self, pcm_frame: np.ndarray) -> tuple[list[TimedWord], float | None]:
        """Feeds one frame of audio (float32 [1920], 24 kHz); the first call feeds the silent prefix first.

        Returns:
            `(words so far, end-of-turn probability of this step or None)`; the last word may still grow.
        """
        if not self._started:
            self._feed_silence(self.settings.prefix_frames)
        frame = np.asarray(pcm_frame, dtype=np.float32).reshape(1, 1, FRAME_SIZE)
        codes = self.mimi.encode_step(mx.array(frame), self.encode_state)
        eot = self._lm_step(codes[:, :, 0])
        self.audio_frames += 1
        return self.aligner.current(), eot

    def finish(self) -> Transcript:
        """Flushes the model's delay with silence and returns the whole transcript; then `reset()`."""
        if not self._started:
            self._feed_silence(self.settings.prefix_frames)
        self._feed_silence(self.settings.flush_frames)
        return self._transcript()

    @property
    def shown(self) -> str | None:
        """Text to display for the last step (a piece, a space before a new word), or None."""
        return self._shown

    # ----------------------------------------------------------------- whole recordings

    def transcribe(self, pcm: np.ndarray, on_step: Callable[[int, int], None] | None = None) -> Transcript:
        """Transcribes a whole recording (float32 mono 24 kHz; the last partial frame is zero-padded).

        The codec encodes the recording in batches (equal to encoding it frame by frame), then the LM steps
        once per frame. `on_step(step, total_steps)` is called after every step.
        """
        self.reset()
        x = np.asarray(pcm, dtype=np.float32).reshape(-1)
        audio_frames = -(-len(x) // FRAME_SIZE)
        total = self.settings.prefix_frames + audio_frames + self.settings.flush_frames
        stream = np.zeros(total * FRAME_SIZE, dtype=np.float32)
        start = self.settings.prefix_frames * FRAME_SIZE
        stream[start:start + len(x)] = x
        self._started = True
        self.audio_frames = audio_frames
        for first in range(0, total, ENCODE_CHUNK_FRAMES):
            last = min(total, first + ENCODE_CHUNK_FRAMES)
            chunk = mx.array(stream[first * FRAME_SIZE:last * FRAME_SIZE].reshape(1, 1, -1))
            codes = self.mimi.encode_frames(chunk, self.encode_state)
            for t in range(last - first):
                self._lm_step(codes[:, :, t])
                if on_step is not None:
                    on_step(len(self.tokens), total)
        return self._transcript()

    def transcribe_batch(self, pcms: list[np.ndarray]) -> list[Transcript]:
        """Transcribes several recordings side by side, one batched LM step per frame for all of them.

        Where the machine is bound by reading the weights (a CPU with a good BLAS, a GPU), B recordings cost
        little more than one. Shorter recordings are followed by silence up to the longest; each transcript
        is cut to its own length and equals `transcribe` of that recording alone (greedy decoding; up to
        float rounding, which batched matrix products may order differently).
        """
        if not pcms:
            return []
        xs = [np.asarray(p, dtype=np.float32).reshape(-1) for p in pcms]
        s, b = self.settings, len(xs)
        frames = [-(-len(x) // FRAME_SIZE) for x in xs]
        totals = [s.prefix_frames + f + s.flush_frames for f in frames]
        total = max(totals)
        streams = np.zeros((b, 1, total * FRAME_SIZE), dtype=np.float32)
        start = s.prefix_frames * FRAME_SIZE
        for i, x in enumerate(xs):
            streams[i, 0, start:start + len(x)] = x
        generator = Generator(self.lm, text_temp=self.temp, text_top_k=self.top_k, audio_temp=0.0,
                              seed=self.seed if self.seed is not None else int.from_bytes(os.urandom(4), "little"),
                              batch_size=b)
        state = self.mimi.make_encode_state(b)
        tokens, heads = [], []
        n_q = self.lm.config.n_q
        for first in range(0, total, ENCODE_CHUNK_FRAMES):
            last = min(total, first + ENCODE_CHUNK_FRAMES)
            codes = self.mimi.encode_frames(mx.array(streams[:, :, first * FRAME_SIZE:last * FRAME_SIZE]), state)
            for t in range(last - first):
                user = codes[:, :n_q, t].astype(mx.int32)
                if self.has_end_of_turn:
                    step_tokens, _, probs = generator.step_with_extra_heads(user)
                    heads.append(probs[:, END_OF_TURN_HEAD, 0])
                else:
                    step_tokens, _ = generator.step(user)
                tokens.append(step_tokens)
        tokens = np.stack(tokens, axis=1)
        eot = np.stack(heads, axis=1) if heads else None
        out = []
        for i in range(b):
            row = [int(t) for t in tokens[i, :totals[i]]]
            words = words_from_tokens(row, self.tokenizer, s.offset_seconds, s.pad_id, s.epad_id)
            out.append(Transcript(" ".join(w.word for w in words), words, row,
                                  None if eot is None else [float(p) for p in eot[i, :totals[i]]], self.model_name,
                                  frames[i] * FRAME_SIZE / SAMPLE_RATE))
        return out

    # ----------------------------------------------------------------- internals

    def _feed_silence(self, frames: int) -> None:
        self._started = True
        silence = mx.zeros((1, 1, FRAME_SIZE), dtype=mx.float32)
        for _ in range(frames):
            self._lm_step(self.mimi.encode_step(silence, self.encode_state)[:, :, 0])

    def _lm_step(self, user_codes: mx.array) -> float | None:
        user = user_codes[:, :self.lm.config.n_q].astype(mx.int32)
        if self.has_end_of_turn:
            tokens, _, probs = self.generator.step_with_extra_heads(user)
            eot = float(probs[0, END_OF_TURN_HEAD, 0])
            self.end_of_turn.append(eot)
        else:
            tokens, _ = self.generator.step(user)
            eot = None
        token = int(tokens[0])
        self.tokens.append(token)
        self.aligner.push(token)
        self._shown = self.display.push(token, len(self.tokens) - 1)
        return eot

    def _transcript(self) -> Transcript:
        words = self.aligner.finish()
        return Transcript(" ".join(w.word for w in words), words, list(self.tokens),
                          list(self.end_of_turn) if self.has_end_of_turn else None, self.model_name,
                          self.audio_frames * FRAME_SIZE / SAMPLE_RATE)
