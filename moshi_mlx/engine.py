"""One conversation: a 24 kHz microphone frame in, Moshi's frame and a piece of its inner monologue out.

mic frame -> Mimi encode_step -> LM step -> Mimi decode_step -> speaker frame, with the text token
decoded into words on the side. All streaming state (codec states, LM caches, delays, the text decoder)
lives in this object and `reset()` starts a new conversation.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .constants import (DEFAULT_AUDIO_TEMP, DEFAULT_AUDIO_TOP_K, DEFAULT_TEXT_TEMP, DEFAULT_TEXT_TOP_K,
                        FRAME_SIZE)
from .text import TextDecoder, Word


@dataclass
class SamplingParams:
    """How Moshi picks its tokens (temperature 0 = greedy; a seed makes runs reproducible)."""

    text_temp: float = DEFAULT_TEXT_TEMP
    text_top_k: int = DEFAULT_TEXT_TOP_K
    audio_temp: float = DEFAULT_AUDIO_TEMP
    audio_top_k: int = DEFAULT_AUDIO_TOP_K
    seed: int | None = None


@dataclass
class StepResult:
    """What one 80 ms step produced."""

    pcm: np.ndarray  # float32 [1920]: Moshi's voice for this frame (silence until the first frame exists)
    text: str | None  # text to show now, or None
    text_token: int
    moshi_codes: np.ndarray | None  # int32 [dep_q] of the frame decoded this step, or None


class Engine:
    """Owns one full-duplex conversation.

    Args:
        lm: the Moshi LM (`moshi_mlx.load_lm`).
        mimi: the codec (`moshi_mlx.load_mimi`), with at least the LM's user codebooks.
        tokenizer: sentencepiece processor for the inner monologue, or None (text then stays tokens).
        sampling: sampling parameters.
    """

    def __init__(self, lm, mimi, tokenizer=None, sampling: SamplingParams | None = None):
        self.lm, self.mimi, self.tokenizer = lm, mimi, tokenizer
        self.sampling = sampling or SamplingParams()
        cfg = lm.config
        if mimi.num_codebooks < cfg.user_q or mimi.num_codebooks < cfg.dep_q:
            raise ValueError(f"the codec gives {mimi.num_codebooks} codebooks but the LM needs "
                             f"{max(cfg.user_q, cfg.dep_q)}")
        if mimi.cfg.quantizer.bins != cfg.card:
            raise ValueError(f"the codec has {mimi.cfg.quantizer.bins} codes per codebook but the LM "
                             f"expects {cfg.card}: they are not from the same checkpoint")
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Starts a new conversation (fresh codec states, LM caches and text)."""
        s = self.sampling
        if seed is not None:
            s.seed = seed
        self.generator = self.lm.generator(text_temp=s.text_temp, text_top_k=s.text_top_k,
                                           audio_temp=s.audio_temp, audio_top_k=s.audio_top_k, seed=s.seed)
        self.encode_state = self.mimi.make_encode_state(1)
        self.decode_state = self.mimi.make_decode_state(1)
        self.text = TextDecoder(self.tokenizer) if self.tokenizer is not None else None
        self.frame = 0

    def warmup(self, steps: int = 3) -> None:
        """Runs a few silent steps (compiles graphs, allocates caches), then starts afresh.

        Without it the first real seconds stutter while MLX builds and compiles.
        """
        silence = np.zeros(FRAME_SIZE, dtype=np.float32)
        for _ in range(max(steps, self.lm.config.max_delay + 1)):
            self.step(silence)
        self.reset()

    def step(self, pcm_frame: np.ndarray) -> StepResult:
        """Advances the conversation by one 80 ms frame.

        Args:
            pcm_frame: float32 [1920] microphone samples at 24 kHz.
        """
        x = np.asarray(pcm_frame, dtype=np.float32).reshape(-1)
        if x.shape[0] != FRAME_SIZE:
            raise ValueError(f"a frame is {FRAME_SIZE} samples at 24 kHz, got {x.shape[0]}")
        codes = self.mimi.encode_step(mx.array(x)[None, None], self.encode_state)
        user = codes[:, :self.lm.config.user_q, 0]
        # Encode, LM step and decode are one graph read in one host sync. The LM only samples codes in
        # range, so the codec's range check (a sync of its own) is skipped.
        text_tokens, moshi, pcm = self.generator.step_and_decode(
            user, lambda frame: self.mimi.decode_step(frame[:, :, None], self.decode_state, check_range=False))
        token = int(text_tokens[0])
        shown = self.text.push(token, self.frame) if self.text is not None else None
        if moshi is None:
            pcm, frame_codes = np.zeros(FRAME_SIZE, dtype=np.float32), None
        else:
            pcm, frame_codes = pcm[0, 0], moshi[0]  # float32 already (read as one float32 array)
        self.frame += 1
        return StepResult(pcm, shown, token, frame_codes)

    def words(self, final: bool = False) -> list[Word]:
        """The inner monologue's finished words; `final=True` also closes the word in progress (at the end)."""
        if self.text is None:
            return []
        return list(self.text.finish(self.frame) if final else self.text.words)

    def run_offline(self, pcm: np.ndarray, tail_frames: int = 0, on_step=None) -> "OfflineResult":
        """A whole conversation from a recording, faster than the frame-by-frame path.

        The user's audio is encoded in one batch, the LM steps once per frame (one host sync each: reading
        the tokens), and Moshi's frames are decoded in one batch at the end. Moshi's frame f lands at
        f * 80 ms, the same timeline as the input and the word times.

        Args:
            pcm: float32 mono 24 kHz samples; padded with silence to whole frames.
            tail_frames: extra silent frames after the input, so that Moshi can finish answering.
            on_step: called after each step with (step, total_steps, piece of text or None).
        """
        self.reset()
        x = np.asarray(pcm, dtype=np.float32).reshape(-1)
        total = -(-len(x) // FRAME_SIZE) + int(tail_frames)
        if total <= 0:
            raise ValueError("the input holds no audio")
        padded = np.zeros(total * FRAME_SIZE, dtype=np.float32)
        padded[:len(x)] = x
        user_q = self.lm.config.user_q
        user = self.mimi.encode(mx.array(padded)[None, None])[:, :user_q]
        tokens, frames = [], []
        for t in range(total):
            text_tokens, moshi = self.generator.step(user[:, :, t])
            token = int(text_tokens[0])
            tokens.append(token)
            shown = self.text.push(token, t) if self.text is not None else None
            if moshi is not None:
                frames.append(moshi[0])
            self.frame = t + 1
            if on_step is not None:
                on_step(t, total, shown)
        reply = np.zeros(total * FRAME_SIZE, dtype=np.float32)
        codes = np.stack(frames, axis=1)[None] if frames else None
        if codes is not None:
            out = np.array(self.mimi.decode(mx.array(codes))[0, 0], dtype=np.float32)
            reply[:out.shape[0]] = out
        return OfflineResult(padded, reply, np.array(tokens, dtype=np.int32), codes, self.words(final=True))


@dataclass
class OfflineResult:
    """A finished offline conversation, every signal on the same 24 kHz timeline."""

    user: np.ndarray  # float32 [frames * 1920], the input padded with the tail
    reply: np.ndarray  # float32 [frames * 1920], Moshi's voice (silent where no frame is complete)
    text_tokens: np.ndarray  # int32 [frames]
    moshi_codes: np.ndarray | None  # int32 [1, dep_q, completed frames]
    words: list[Word]
