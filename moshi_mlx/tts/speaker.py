"""Streaming text-to-speech with Kyutai's TTS models (`kyutai/tts-1.6b-en_fr`).

    model = moshi_mlx.load("kyutai/tts-1.6b-en_fr", kind="tts")
    speaker = model.speaker(voice="expresso/ex03-ex01_happy_001_channel1_334s.wav")
    for frame in speaker.speak("Hello world."):      # 1920 samples at 24 kHz, from the first word on
        play(frame)
    speech = speaker.last                             # words, tokens, codes of that run

One step per 80 ms frame. The model samples a text token, of which the state machine
(`moshi_mlx.tts.machine`) keeps only "a new word starts" or "pad" and feeds the words of the script in
its place; the depth transformer then samples the frame's audio codebooks from that fed token. Audio
trails text by `delay_steps` (16): until then it is forced to the zero token (per codebook, with each
codebook's own delay), and the frames from 16 on are the speech. A model trained with CFG distillation
takes the guidance strength as a condition (`cfg`, one of its listed values); any other model gets real
classifier-free guidance: the batch is doubled with the null conditions (no voice, no values, and no
text after the first step), the text token comes from the conditioned half, and each codebook samples
from `null + (cond - null) * cfg`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from ..constants import FRAME_RATE, ZERO_TOKEN
from ..lm.sampling import make_sampler
from .machine import PAD, StateMachine
from .script import Entry, script_entries
from .settings import TtsSettings
from .voice import VOICE_KEY, Voice, speaker_condition

DEFAULT_TEMP = 0.6
TEXT_TOP_K, AUDIO_TOP_K = 25, 250
MAX_STEPS = 30_000


@dataclass
class Speech:
    """One utterance: `words` as `(word, start_s, end_s)` on the audio's timeline; `text_tokens` the token fed
    at each step; `audio_codes` `[frames][n_q]` undelayed from frame 0; `pcm` from frame `delay_steps`."""

    pcm: np.ndarray
    words: list[tuple[str, float, float]]
    text_tokens: list[int]
    audio_codes: np.ndarray
    end_step: int | None
    consumption_steps: list[int] = field(default_factory=list)


class Speaker:
    """Speaks text with one model and voice.

    Args:
        lm, mimi, tokenizer: the TTS model's parts.
        settings: from `TtsSettings.from_config`.
        voices: the speaker embeddings (up to 5; one for a single speaker), for models that take them.
        cfg: guidance strength (a listed value for a CFG-distilled model; 1.0 = none otherwise).
        temp: sampling temperature of text and audio (0 = greedy).
        seed: sampling seed (None: from the OS).
    """

    def __init__(self, lm, mimi, tokenizer, settings: TtsSettings, voices: list[Voice] | None = None,
                 cfg: float = 2.0, temp: float = DEFAULT_TEMP, seed: int | None = None):
        cfg_lm = lm.config
        self.lm, self.mimi, self.tokenizer, self.settings = lm, mimi, tokenizer, settings
        self.voices = list(voices or [])
        conditioning = cfg_lm.conditioning
        names = {s.name for s in conditioning.conditioners} if conditioning else set()
        self.multi_speaker = VOICE_KEY in names
        if self.multi_speaker and not self.voices:
            raise ValueError("this model speaks with a voice: give one")
        if not self.multi_speaker and self.voices:
            raise ValueError("this model takes no voice")
        self.distilled = "cfg" in names
        if self.distilled:
            values = conditioning.spec("cfg").possible_values or ()
            if format(cfg, ".1f") not in values:
                raise ValueError(f"cfg must be one of {', '.join(values)} for this model, got {cfg:g}")
        self.cfg = float(cfg)
        self.real_cfg = None if self.distilled or self.cfg == 1.0 else self.cfg
        self.machine = StateMachine(cfg_lm.text_card + 1, settings.second_stream_ahead, settings.max_padding,
                                    settings.initial_padding)
        self.temp = float(temp)
        self.seed = seed
        self.last: Speech | None = None
        self._conditions = self._make_conditions()
        self._step, self._depformer = self._compile()

    # ------------------------------------------------------------------------------------ public

    def entries(self, text: str | list[str]) -> list[Entry]:
        turns = [text] if isinstance(text, str) else list(text)
        return script_entries(self.tokenizer, turns, self.multi_speaker, self.settings.padding_between)

    def speak(self, text: str | list[str] | Iterable[str]) -> Iterator[np.ndarray]:
        """Yields the speech, float32 [1920] frames at 24 kHz, as it is generated; then `self.last` holds
        the whole `Speech`. `text` is a script (a string, or a list of turns)."""
        return self._run(self.entries(text))

    def synthesize(self, text: str | list[str]) -> Speech:
        """The whole utterance at once."""
        for _ in self.speak(text):
            pass
        return self.last

    # ------------------------------------------------------------------------------------ internals

    def _make_conditions(self):
        lm = self.lm
        conditioning = lm.config.conditioning
        if conditioning is None:
            return None, None
        rows = 2 if self.real_cfg is not None else 1
        values: dict[str, list[str | None]] = {}
        tensors = {}
        for spec in conditioning.conditioners:
            if spec.kind == "lut":
                value = {"cfg": format(self.cfg, ".1f"), "control": "ok"}.get(spec.name)
                if value is None:
                    raise ValueError(f"no value known for the model's condition {spec.name!r}")
                values[spec.name] = [value] + [None] * (rows - 1)  # the null half has none
            elif spec.name == VOICE_KEY:
                cond = speaker_condition(self.voices, spec.dim)
                if rows == 2:
                    null = speaker_condition(self.voices, spec.dim, null=True)
                    cond = (mx.concatenate([cond[0], null[0]]), mx.concatenate([cond[1], null[1]]))
                tensors[spec.name] = cond
            else:
                raise ValueError(f"the model's tensor condition {spec.name!r} is not supported")
        condition_sum, cross_kv = lm.conditions(values, tensors)
        mx.eval(condition_sum, cross_kv)
        return condition_sum, cross_kv

    def _compile(self):
        """The two halves of a step as compiled functions (the state machine runs on the host between them:
        the depth transformer needs the fed text token)."""
        lm, cfg, bonus = self.lm, self.lm.config, self.settings.padding_bonus
        text_sampler = make_sampler(self.temp, TEXT_TOP_K, cfg.text_card)
        audio_sampler = make_sampler(self.temp, AUDIO_TOP_K, cfg.card)
        real_cfg = self.real_cfg

        def step(tokens, keys, values, offset, key, condition_sum, cross_kv, visible):
            h, text_logits, keys, values = lm.temporal_step(tokens, keys, values, offset, visible, condition_sum,
                                                            cross_kv)
            logits = text_logits[:1, -1].astype(mx.float32)  # the conditioned half decides the text
            if bonus:
                logits = logits + bonus * (mx.arange(logits.shape[-1]) == PAD)
            key, text_key, audio_key = mx.random.split(key, 3)
            return h, text_sampler(logits, text_key), keys, values, key, audio_key

        def depformer(h, first, key):
            return lm.forward_depformer(h, first, sampler=audio_sampler, key=key, cfg_coef=real_cfg)[0][0]

        return mx.compile(step), mx.compile(depformer)

    def _run(self, entries: list[Entry]) -> Iterator[np.ndarray]:
        lm, cfg, s = self.lm, self.lm.config, self.settings
        rows = 2 if self.real_cfg is not None else 1
        seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(4), "little")
        key = mx.random.key(seed)
        cache = lm.make_cache(rows)
        keys, values = [c.keys for c in cache], [c.values for c in cache]
        condition_sum, cross_kv = self._conditions
        state = self.machine.new_state(entries)
        audio_delays = cfg.delays[1:]
        max_delay = max(audio_delays)
        fed: list[int] = []
        audio_steps: list[mx.array] = []  # [n_q] per step, lazy
        frame_codes: list[mx.array] = []  # [n_q] per frame, undelayed, lazy
        decode_state = self.mimi.make_decode_state(1)
        pcm_frames: list[np.ndarray] = []
        initial_audio = mx.full((cfg.n_q,), cfg.card, dtype=mx.int32)
        for step in range(MAX_STEPS):
            if state.end_step is not None and step >= state.end_step + s.delay_steps + s.final_padding:
                break
            tokens = self._inputs(step, fed, audio_steps, audio_delays, initial_audio, rows)
            h, text, keys, values, key, audio_key = self._step(
                tokens, keys, values, mx.array(step, dtype=mx.int32), key, condition_sum, cross_kv,
                self._visible(step))
            token = self.machine.process(step, state, int(text[0].item()))  # the one host sync of a step
            fed.append(token)
            if step < s.delay_steps:
                audio = mx.full((cfg.n_q,), ZERO_TOKEN, dtype=mx.int32)
            else:
                audio = self._depformer(h, mx.array([token] * rows, dtype=mx.int32), audio_key)
                if step < s.delay_steps + max_delay:
                    forced = mx.array([step < d + s.delay_steps for d in audio_delays])
                    audio = mx.where(forced, ZERO_TOKEN, audio)
                audio = audio.astype(mx.int32)
            audio_steps.append(audio)
            frame = step - max_delay
            if frame >= 0:  # frame `frame` is complete: its last codebooks were sampled now
                frame_codes.append(self._frame(audio_steps, frame, audio_delays))
            if frame >= s.delay_steps:
                pcm = self.mimi.decode_step(frame_codes[-1][None, :, None], decode_state, check_range=False)
                out = np.array(pcm[0, 0])
                pcm_frames.append(out)
                yield out
        codes = np.array(mx.stack(frame_codes)) if frame_codes else np.zeros((0, cfg.n_q), dtype=np.int32)
        words = []
        for i, (word, start) in enumerate(state.transcript):
            end = state.transcript[i + 1][1] if i + 1 < len(state.transcript) else (
                state.end_step if state.end_step is not None else len(fed))
            words.append((word, start / FRAME_RATE, end / FRAME_RATE))
        pcm = np.concatenate(pcm_frames) if pcm_frames else np.zeros(0, dtype=np.float32)
        self.last = Speech(pcm, words, fed, codes, state.end_step, list(state.consumption_steps))

    def _visible(self, step: int) -> int:
        # The attended prefix of the KV ring grows in buckets: one compiled graph per bucket.
        context = self.lm.config.context
        return min(context, -(-(step + 1) // 128) * 128)

    @staticmethod
    def _frame(audio_steps: list[mx.array], frame: int, delays: tuple[int, ...]) -> mx.array:
        """Frame `frame`'s codebooks: codebook q was sampled at step `frame + delays[q]`."""
        return mx.stack([audio_steps[frame + d][q] for q, d in enumerate(delays)])

    def _inputs(self, step: int, fed: list[int], audio_steps: list[mx.array], delays, initial_audio,
                rows: int) -> mx.array:
        cfg = self.lm.config
        if step == 0:
            text = [cfg.text_card] * rows
            audio = initial_audio
        else:
            text = [fed[-1]] + [ZERO_TOKEN] * (rows - 1)  # the null half sees no text after the first step
            ready = mx.array([step > d for d in delays])
            audio = mx.where(ready, audio_steps[-1], initial_audio)
        audio = mx.broadcast_to(audio[None], (rows, cfg.n_q))
        return mx.concatenate([mx.array(text, dtype=mx.int32)[:, None], audio.astype(mx.int32)], axis=1)
