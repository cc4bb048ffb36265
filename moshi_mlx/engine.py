"""One conversation: a 24 kHz microphone frame in, Moshi's frame and a piece of its inner monologue out.

mic frame -> Mimi encode_step -> LM step -> Mimi decode_step -> speaker frame, with the text token
decoded into words on the side. All streaming state (codec states, LM caches, delays, the text decoder)
lives in this object and `reset()` starts a new conversation. `step` runs one frame serially;
`stream` pipelines the stages over many frames (`moshi_mlx.pipeline`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .constants import (DEFAULT_AUDIO_TEMP, DEFAULT_AUDIO_TOP_K, DEFAULT_TEXT_TEMP, DEFAULT_TEXT_TOP_K,
                        FRAME_SIZE)
from .lm.generate import Generator
from .mimi.compiled import state_arrays
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
    latency_s: float | None = None  # `Engine.stream`: from the frame's arrival to its result
    stage_ms: tuple[float, ...] | None = None  # `Engine.stream`: encode, LM and decode compute times

    @property
    def compute_ms(self) -> float | None:
        """The frame's compute time that limits throughput: the slowest stage (pipelined)."""
        return max(self.stage_ms) if self.stage_ms else None


class Engine:
    """Owns one full-duplex conversation.

    Two ways to run it: `step(frame)`, one frame at a time on the caller's thread (encode, LM step and
    decode as one graph, one host sync), and `stream(frames)`, the same three stages pipelined on three
    threads (a frame then costs the slowest stage instead of their sum). Both give the same tokens and
    audio for the same seed. The stage methods (`encode`, `lm_step`, `decode`, `finish`) are what the
    pipeline drives; the engine itself knows nothing of threads.

    Args:
        lm: the Moshi LM (`moshi_mlx.load_lm`).
        mimi: the codec (`moshi_mlx.load_mimi`), with at least the LM's user codebooks.
        tokenizer: sentencepiece processor for the inner monologue, or None (text then stays tokens).
        sampling: sampling parameters.
        codec_device: where Mimi runs: "auto" (see `pick_codec_device`), "cpu" or "gpu".
    """

    def __init__(self, lm, mimi, tokenizer=None, sampling: SamplingParams | None = None,
                 codec_device: str = "auto"):
        self.lm, self.mimi, self.tokenizer = lm, mimi, tokenizer
        self.sampling = sampling or SamplingParams()
        cfg = lm.config
        if mimi.num_codebooks < cfg.user_q or mimi.num_codebooks < cfg.dep_q:
            raise ValueError(f"the codec gives {mimi.num_codebooks} codebooks but the LM needs "
                             f"{max(cfg.user_q, cfg.dep_q)}")
        if mimi.cfg.quantizer.bins != cfg.card:
            raise ValueError(f"the codec has {mimi.cfg.quantizer.bins} codes per codebook but the LM "
                             f"expects {cfg.card}: they are not from the same checkpoint")
        self.lm_device = mx.default_device()
        self.codec_device = pick_codec_device(codec_device, self.lm_device)
        self._pipeline = None
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Starts a new conversation (fresh codec states, LM caches and text)."""
        s = self.sampling
        if seed is not None:
            s.seed = seed
        self.generator = Generator(self.lm, text_temp=s.text_temp, text_top_k=s.text_top_k,
                                   audio_temp=s.audio_temp, audio_top_k=s.audio_top_k, seed=s.seed)
        self.encode_state = self.mimi.make_encode_state(1)
        self.decode_state = self.mimi.make_decode_state(1)
        self.text = TextDecoder(self.tokenizer) if self.tokenizer is not None else None
        self.frame = 0

    def warmup(self, steps: int = 3, pipelined: bool = False) -> None:
        """Runs a few silent steps (compiles graphs, allocates caches), then starts afresh.

        Without it the first real seconds stutter while MLX builds and compiles. MLX keeps compiled graphs
        per thread, so warm up the way the conversation will run: `pipelined=True` before `stream`, else
        on the thread that will call `step`.
        """
        silence = np.zeros(FRAME_SIZE, dtype=np.float32)
        frames = [silence] * max(steps, self.lm.config.max_delay + 1)
        if pipelined:
            for _ in self.stream(frames):
                pass
        else:
            for frame in frames:
                self.step(frame)
        self.reset()

    def step(self, pcm_frame: np.ndarray) -> StepResult:
        """Advances the conversation by one 80 ms frame, on the caller's thread.

        Args:
            pcm_frame: float32 [1920] microphone samples at 24 kHz.
        """
        with mx.stream(self.codec_device):
            codes = self.mimi.encode_step(_frame_array(pcm_frame), self.encode_state)
        user = codes[:, :self.lm.config.user_q, 0]

        def decode(frame: mx.array) -> mx.array:
            with mx.stream(self.codec_device):
                return self.mimi.decode_step(frame[:, :, None], self.decode_state, check_range=False)

        # Encode, LM step and decode are one graph read in one host sync. The LM only samples codes in
        # range, so the codec's range check (a sync of its own) is skipped.
        text_tokens, moshi, pcm = self.generator.step_and_decode(user, decode)
        if moshi is None:
            return self.finish(int(text_tokens[0]), None, None)
        return self.finish(int(text_tokens[0]), moshi[0], pcm[0, 0])  # float32 already

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[StepResult]:
        """Advances the conversation by every frame of `frames`, encode, LM and decode pipelined.

        Frame i is encoded while frame i-1 is in the LM and frame i-2 is decoded, each stage on its own
        thread and MLX stream (`moshi_mlx.pipeline`). Yields one `StepResult` per frame, in order, with
        exactly the tokens and audio of calling `step` on each frame, and `latency_s` set (from the frame
        being taken from `frames` to its result). `frames` is read from another thread; it may block
        (a microphone), and the pipeline takes only what it can hold (two frames per stage).

        Args:
            frames: float32 [1920] microphone frames at 24 kHz.
        """
        if self._pipeline is None:
            from .pipeline import Pipeline

            self._pipeline = Pipeline(self)
        return self._pipeline.run(frames)

    def close(self) -> None:
        """Ends the pipeline's threads, if `stream` started them (they also end with the process)."""
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None

    # ----------------------------------------------------------------- the stages

    def encode(self, pcm_frame: np.ndarray) -> np.ndarray:
        """Stage 1: the user's codes of one frame, int32 [user_q] (evaluated)."""
        codes = self.mimi.encode_step(_frame_array(pcm_frame), self.encode_state)
        return np.array(codes[0, :self.lm.config.user_q, 0])

    def lm_step(self, user_codes: np.ndarray) -> tuple[int, np.ndarray | None]:
        """Stage 2: one LM step: (text token, Moshi's int32 [dep_q] frame completed now, or None)."""
        text_tokens, moshi = self.generator.step(np.asarray(user_codes, dtype=np.int32)[None])
        return int(text_tokens[0]), None if moshi is None else moshi[0]

    def decode(self, moshi_codes: np.ndarray | None) -> np.ndarray | None:
        """Stage 3: Moshi's voice for a completed frame, float32 [1920] (None when there is no frame)."""
        if moshi_codes is None:
            return None
        codes = mx.array(np.asarray(moshi_codes, dtype=np.int32)[None, :, None])
        return np.array(self.mimi.decode_step(codes, self.decode_state, check_range=False)[0, 0])

    def finish(self, token: int, moshi_codes: np.ndarray | None, pcm: np.ndarray | None,
               latency_s: float | None = None, stage_ms: tuple[float, ...] | None = None) -> StepResult:
        """Last, in frame order: the text shown for the token, and the frame's result."""
        shown = self.text.push(token, self.frame) if self.text is not None else None
        self.frame += 1
        if pcm is None:
            pcm = np.zeros(FRAME_SIZE, dtype=np.float32)
        return StepResult(pcm, shown, token, moshi_codes, latency_s, stage_ms)

    def settle(self) -> None:
        """Evaluates every piece of streaming state, so that any thread can carry on from it."""
        self.settle_encoder()
        self.settle_lm()
        self.settle_decoder()

    def settle_encoder(self) -> None:
        mx.eval(state_arrays(self.encode_state))

    def settle_lm(self) -> None:
        self.generator.settle()

    def settle_decoder(self) -> None:
        mx.eval(state_arrays(self.decode_state))

    # ----------------------------------------------------------------- results

    def words(self, final: bool = False) -> list[Word]:
        """The inner monologue's finished words; `final=True` also closes the word in progress (at the end)."""
        if self.text is None:
            return []
        return list(self.text.finish(self.frame) if final else self.text.words)

    def run_offline(self, pcm: np.ndarray, tail_frames: int = 0, on_step=None) -> "OfflineResult":
        """A whole conversation from a recording, through the pipeline (`stream`).

        Moshi's frame f is complete at step f + D (D = the LM's largest audio delay); here it is placed at
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
        frames = (padded[t * FRAME_SIZE:(t + 1) * FRAME_SIZE] for t in range(total))
        tokens, codes, reply = [], [], np.zeros(total * FRAME_SIZE, dtype=np.float32)
        for t, r in enumerate(self.stream(frames)):
            tokens.append(r.text_token)
            if r.moshi_codes is not None:
                f = len(codes)
                codes.append(r.moshi_codes)
                reply[f * FRAME_SIZE:(f + 1) * FRAME_SIZE] = r.pcm
            if on_step is not None:
                on_step(t, total, r.text)
        moshi_codes = np.stack(codes, axis=1)[None] if codes else None
        return OfflineResult(padded, reply, np.array(tokens, dtype=np.int32), moshi_codes, self.words(final=True))


def pick_codec_device(choice: str, lm_device: mx.Device) -> mx.Device:
    """Where Mimi runs. "auto": the CPU when the LM is on a GPU that shares memory with the CPU (Apple
    Silicon: no copies, and the codec's ~1000 small kernels per frame no longer queue behind the LM's on
    the GPU, as Kyutai's CLI runs its codec on the CPU beside the LM); otherwise the LM's device (a
    discrete GPU, reached through copies, or a CPU-only machine). "cpu" and "gpu" force a device.
    """
    if choice == "cpu":
        return mx.Device(mx.cpu)
    if choice == "gpu":
        if not mx.is_available(mx.gpu):
            raise ValueError("--codec-device gpu: this machine has no GPU that MLX can use")
        return mx.Device(mx.gpu)
    if choice != "auto":
        raise ValueError(f"codec device must be auto, cpu or gpu, got {choice!r}")
    unified = lm_device.type == mx.DeviceType.gpu and mx.metal.is_available()
    return mx.Device(mx.cpu) if unified else lm_device


def _frame_array(pcm_frame: np.ndarray) -> mx.array:
    x = np.asarray(pcm_frame, dtype=np.float32).reshape(-1)
    if x.shape[0] != FRAME_SIZE:
        raise ValueError(f"a frame is {FRAME_SIZE} samples at 24 kHz, got {x.shape[0]}")
    return mx.array(x)[None, None]


@dataclass
class OfflineResult:
    """A finished offline conversation, every signal on the same 24 kHz timeline."""

    user: np.ndarray  # float32 [frames * 1920], the input padded with the tail
    reply: np.ndarray  # float32 [frames * 1920], Moshi's voice (silent where no frame is complete)
    text_tokens: np.ndarray  # int32 [frames]
    moshi_codes: np.ndarray | None  # int32 [1, dep_q, completed frames]
    words: list[Word]
