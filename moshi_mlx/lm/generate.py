"""Streaming generation: per-stream delays, sampling, one host sync per step.

Alignment (as Kyutai trained Moshi, and as their MLX, Swift and Rust code run it): position t of the
temporal transformer sees every stream's delayed frame t-1. Step 0 feeds `text_card` for text and `card`
for every audio stream. At step t a stream with delay d feeds the token of its frame t-1-d, or its initial
token while that frame does not exist (t <= d). Every token generated at step t is therefore an input of
step t+1; the user's frame given at step t is first seen at step t+1 by the streams of delay 0 (cb0) and
at step t+2 by those of delay 1 (acoustic codebooks of the 7B). Moshi's codebook k with delay d_k sampled
at step t belongs to frame t-d_k, so its full frame t-D (D = the largest Moshi audio delay) is out after
step t.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..constants import (DEFAULT_AUDIO_TEMP, DEFAULT_AUDIO_TOP_K, DEFAULT_TEXT_TEMP, DEFAULT_TEXT_TOP_K,
                         ZERO_TOKEN)
from .cache import KVCache
from .config import LmConfig
from .sampling import make_sampler

if TYPE_CHECKING:
    from .model import Lm

_VISIBLE_BUCKET = 256
"""Granularity (steps) of the attended prefix of the KV ring while it fills."""


def delayed_inputs(config: LmConfig, text: np.ndarray, audio: np.ndarray, user: np.ndarray) -> np.ndarray:
    """Temporal inputs `[1 + n_q, T]` of T steps, from what each step produced (reference implementation).

    Args:
        config: The LM config (delays, cards).
        text: Text token produced at each step, `[T]`.
        audio: Moshi's codebooks produced at each step, `[T, dep_q]` (raw, not re-aligned).
        user: The user's frame given at each step, `[T, n_q - dep_q]`.
    """
    steps = len(text)
    streams = np.concatenate([np.asarray(text)[:, None], np.asarray(audio), np.asarray(user)], axis=1)
    initial = np.array([config.text_card] + [config.card] * config.n_q)
    out = np.empty((1 + config.n_q, steps), dtype=np.int32)
    for s, delay in enumerate(config.delays):
        generated = s <= config.dep_q
        for t in range(steps):
            # Generated streams: the step-(t-1) output is frame t-1-delay. User streams: frame t-1-delay.
            source = t - 1 if generated else t - 1 - delay
            exists = t - 1 - delay >= 0
            out[s, t] = streams[source, s] if exists else initial[s]
    return out


class _CompiledSteps:
    """Compiled step functions of one model, per sampling setting (kept on the model, shared by its
    generators, so that a new conversation reuses the traced graphs).

    A compiled function keeps the weight arrays it traced as constants, so the store remembers which
    arrays those were and starts afresh when the model's parameters are replaced.
    """

    def __init__(self):
        self.weights_id: tuple[int, ...] = ()
        self.by_setting: dict[tuple, tuple[Any, Any]] = {}


def _compiled_functions(model: "Lm", text_temp: float, text_top_k: int, audio_temp: float, audio_top_k: int):
    """`(step, forced_depformer)` compiled functions; pure: random keys and caches are explicit inputs."""
    store = getattr(model, "_compiled_steps", None)
    if store is None:
        store = _CompiledSteps()
        model._compiled_steps = store
    # The traced constants stay referenced by the store, so their ids cannot be reused by new arrays.
    weights_id = tuple(id(a) for _, a in tree_flatten(model.parameters()))
    if weights_id != store.weights_id:
        store.weights_id, store.by_setting = weights_id, {}
    setting = (float(text_temp), int(text_top_k), float(audio_temp), int(audio_top_k))
    if setting in store.by_setting:
        return store.by_setting[setting]
    cfg = model.config
    text_sampler = make_sampler(text_temp, text_top_k, cfg.text_card)
    audio_sampler = make_sampler(audio_temp, audio_top_k, cfg.card)

    def step(tokens: mx.array, keys: list[mx.array], values: list[mx.array], offset: mx.array, key: mx.array,
             visible: int):
        h, text_logits, keys, values = model.temporal_step(tokens, keys, values, offset, visible)
        key, text_key, audio_key = mx.random.split(key, 3)
        text = text_sampler(text_logits[:, -1].astype(mx.float32), text_key)
        audio, audio_logits = model.forward_depformer(h, text, sampler=audio_sampler, key=audio_key)
        # Cheap (a few rows): computed every step of a model that has them, read only when asked for.
        extra = model.extra_head_probs(h)[:, -1]
        return h, text_logits, text, audio, audio_logits, extra, keys, values, key

    def forced(h: mx.array, text: mx.array, audio: mx.array) -> mx.array:
        return model.forward_depformer(h, text, forced=audio)[1]

    store.by_setting[setting] = (mx.compile(step), mx.compile(forced))
    return store.by_setting[setting]


@dataclass
class _Step:
    """Lazy arrays of one step, built (and queued) one call ahead of being read."""

    h: mx.array
    text_logits: mx.array
    text: mx.array
    audio: mx.array
    audio_logits: mx.array
    extra: mx.array


class Generator:
    """Runs the LM one frame at a time.

        gen = Generator(model, seed=0)
        for user_frame in frames:              # [B, 8] ints per 80 ms
            text, moshi_frame = gen.step(user_frame)

    Step n's graph is built and queued (`mx.async_eval`) during call n-1, which is possible because step n
    only reads the user's frames up to n-1; on a GPU the single host sync of a call reads step n's tokens
    while step n+1 is already queued behind it (on the CPU, which evaluates inside `async_eval`, step n's
    tokens are read before step n+1 is built).

    Args:
        model: The LM.
        text_temp: Text sampling temperature (0 = greedy).
        text_top_k: Text top-k (0 = no cut).
        audio_temp: Audio sampling temperature (0 = greedy).
        audio_top_k: Audio top-k (0 = no cut).
        seed: Seed of the random key; None draws one from the OS.
        batch_size: Conversations run side by side.
        cache: Fresh KV caches from `model.make_cache(batch_size)` (made here if None).

    Raises:
        ValueError: On a cache that is not fresh or does not fit the model and batch size.
    """

    def __init__(self, model: "Lm", *, text_temp: float = DEFAULT_TEXT_TEMP, text_top_k: int = DEFAULT_TEXT_TOP_K,
                 audio_temp: float = DEFAULT_AUDIO_TEMP, audio_top_k: int = DEFAULT_AUDIO_TOP_K,
                 seed: int | None = None, batch_size: int = 1, cache: list[KVCache] | None = None):
        cfg = model.config
        self.model = model
        self.config = cfg
        self.batch_size = batch_size
        if cache is None:
            cache = model.make_cache(batch_size)
        elif (len(cache) != cfg.num_layers or any(c.offset for c in cache)
              or any(c.keys.shape[0] != batch_size or c.capacity != cfg.context for c in cache)):
            raise ValueError(f"cache must be fresh, from model.make_cache({batch_size})")
        self.cache = cache
        self._audio_sampler = make_sampler(audio_temp, audio_top_k, cfg.card)
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        self._key = mx.random.key(seed)
        self._step_compiled, self._forced = _compiled_functions(model, text_temp, text_top_k, audio_temp,
                                                                audio_top_k)
        # A text-only model (dep_q 0, Kyutai's STT) has no audio delays and never completes a frame.
        self._frame_delay = max(cfg.audio_delays, default=0)
        self._user_delay_index = mx.array(cfg.user_delays, dtype=mx.int32)
        self._frame_index = mx.array([self._frame_delay - d for d in cfg.audio_delays], dtype=mx.int32)
        self._user_history: deque[mx.array] = deque(maxlen=max(cfg.user_delays, default=0) + 1)
        self._audio_history: deque[mx.array] = deque(maxlen=self._frame_delay + 1)
        self._initial_user = mx.full((batch_size, cfg.user_q), cfg.card, dtype=mx.int32)
        self._step = 0
        self._pending: _Step | None = None
        self._overlap = mx.default_device().type == mx.DeviceType.gpu

    def settle(self) -> None:
        """Evaluates all state (caches, the queued next step, histories, the random key).

        MLX arrays still lazy belong to the stream of the thread that built them; after this, another
        thread can carry on the conversation.
        """
        arrays = [self._key, self._initial_user, *self._user_history, *self._audio_history]
        arrays += [a for c in self.cache for a in (c.keys, c.values)]
        if self._pending is not None:
            p = self._pending
            arrays += [p.h, p.text_logits, p.text, p.audio, p.audio_logits, p.extra]
        mx.eval(arrays)

    @property
    def step_index(self) -> int:
        """Index of the step the next `step()` call returns."""
        return self._step

    def _inputs(self, n: int) -> mx.array:
        """Temporal inputs of step n `[B, 1 + n_q]`, from step n-1's tokens and the user's frames."""
        cfg = self.config
        b = self.batch_size
        if n == 0:
            initial = [cfg.text_card] + [cfg.card] * cfg.n_q
            return mx.broadcast_to(mx.array(initial, dtype=mx.int32)[None], (b, 1 + cfg.n_q))
        prev = self._pending
        text = prev.text if n > cfg.text_delay else mx.full((b,), cfg.text_card, dtype=mx.int32)
        audio = prev.audio
        if n <= self._frame_delay and cfg.has_depformer:
            not_yet = mx.array([n <= d for d in cfg.audio_delays])
            audio = mx.where(not_yet, mx.array(cfg.card, dtype=mx.int32), audio)
        frames = list(self._user_history)
        frames += [self._initial_user] * (self._user_history.maxlen - len(frames))
        user = mx.take_along_axis(mx.stack(frames), self._user_delay_index[None, None, :], axis=0)[0]
        return mx.concatenate([text[:, None].astype(mx.int32), audio.astype(mx.int32), user], axis=1)

    def _build(self, n: int) -> _Step:
        cache = self.cache
        context = self.config.context
        # Attend over a prefix of the ring that grows in buckets: one compiled graph per bucket, and early
        # steps do not read `context` slots. Once the ring is full, every slot is in the window.
        visible = min(context, -(-(n + 1) // _VISIBLE_BUCKET) * _VISIBLE_BUCKET)
        keys = [c.keys for c in cache]
        values = [c.values for c in cache]
        for c in cache:
            # Drop the cache's references so the compiled graph may update the rings in place.
            c.keys = c.values = None
        h, text_logits, text, audio, audio_logits, extra, keys, values, self._key = self._step_compiled(
            self._inputs(n), keys, values, mx.array(n, dtype=mx.int32), self._key, visible)
        for c, k, v in zip(cache, keys, values):
            c.keys, c.values = k, v
            c.offset = n + 1
        mx.async_eval(text, audio, self._key)
        return _Step(h, text_logits, text, audio, audio_logits, extra)

    def _user_frame(self, user_codes: Any) -> mx.array:
        cfg = self.config
        expected = f"user codes must be integers shaped [{self.batch_size}, {cfg.user_q}]"
        if isinstance(user_codes, mx.array):
            if not mx.issubdtype(user_codes.dtype, mx.integer) or user_codes.ndim != 2:
                raise ValueError(f"{expected}, got {user_codes.dtype} {list(user_codes.shape)}")
            codes = user_codes
        else:
            arr = np.asarray(user_codes)
            if arr.dtype.kind not in "iu" or arr.ndim != 2:
                raise ValueError(f"{expected}, got {arr.dtype} {list(arr.shape)}")
            if arr.size and (arr.min() < ZERO_TOKEN or arr.max() > cfg.card):
                raise ValueError(f"user codes must be in [{ZERO_TOKEN}, {cfg.card}], got {arr.min()}..{arr.max()}")
            codes = mx.array(arr.astype(np.int32))
        if codes.shape[0] != self.batch_size or codes.shape[1] < cfg.user_q:
            raise ValueError(f"{expected}, got {list(codes.shape)}")
        return codes[:, :cfg.user_q].astype(mx.int32)

    def _forced_tokens(self, tokens: Any, shape: tuple[int, ...], what: str) -> mx.array:
        arr = np.asarray(tokens)
        if arr.dtype.kind not in "iu" or arr.size != int(np.prod(shape)):
            raise ValueError(f"forced {what} must be {list(shape)} integers, got {arr.dtype} {list(arr.shape)}")
        return mx.array(arr.astype(np.int32).reshape(shape))

    def _force(self, p: _Step, text: Any, audio: Any) -> None:
        if text is not None:
            p.text = self._forced_tokens(text, (self.batch_size,), "text")
        if audio is not None and self.config.has_depformer:
            p.audio = self._forced_tokens(audio, (self.batch_size, self.config.dep_q), "audio")
            p.audio_logits = self._forced(p.h, p.text, p.audio)
        else:
            p.audio, p.audio_logits = self.model.forward_depformer(
                p.h, p.text, sampler=self._audio_sampler, key=mx.random.split(self._key)[1])

    def step(self, user_codes: Any, *, text: Any = None, audio: Any = None, return_logits: bool = False):
        """Runs one step.

        Args:
            user_codes: The user's codes of this frame, `[B, n_q - dep_q]` ints (mx or numpy; extra columns,
                e.g. more Mimi codebooks, are ignored; -1 = no input). They are first seen by the model at
                the next step (see the module docstring). Numpy values are range-checked; mx arrays are
                not, as that would need a host sync.
            text: Teacher forcing: `[B]` text tokens to use instead of this step's sampled ones.
            audio: Teacher forcing: `[B, dep_q]` codebooks to use instead of this step's sampled ones
                (they are also the depformer's inputs).
            return_logits: Also return this step's float32 logits (extra host syncs: tests only).

        Returns:
            `(text_tokens [B], moshi_codes [B, dep_q] or None)` as int32 numpy arrays: this step's text
            token and Moshi's frame completed by this step (None during the first max-delay steps). With
            `return_logits`, a third item `(text_logits [B, text_card], audio_logits [B, dep_q, card])`.
        """
        result, _, logits = self._advance(user_codes, text, audio, None, return_logits)
        return result + (logits,) if return_logits else result

    def step_and_decode(self, user_codes: Any, decode: Callable[[mx.array], mx.array]):
        """`step()`, with Moshi's frame also turned into something else (its audio) in the same host sync.

        `decode` gets the frame as a lazy int32 `[B, dep_q]` array and returns a lazy array; it is queued
        right behind the step, ahead of step n+1, and read together with the tokens. Reading the tokens
        first and decoding afterwards costs a second sync per step, and on a GPU the decode would then
        wait behind the next step already queued.

        Returns:
            `(text_tokens [B], moshi_codes [B, dep_q] or None, decoded or None)`, numpy arrays.
        """
        (text, codes), decoded, _ = self._advance(user_codes, None, None, decode, False)
        return text, codes, decoded

    def step_with_extra_heads(self, user_codes: Any, *, text: Any = None):
        """`step()`, also reading the extra heads' probabilities in the same host sync.

        Args:
            user_codes: As for `step()`.
            text: Teacher forcing of the text token, as for `step()`.

        Returns:
            `(text_tokens [B], moshi_codes [B, dep_q] or None, probs)` with `probs` float32
            `[B, extra_heads_num_heads, extra_heads_dim]` (softmax of each head on this step's temporal
            output; head 2, class 0 is Kyutai's STT end-of-turn probability).
        """
        (tokens, codes), probs, _ = self._advance(user_codes, text, None, None, False, extra=True)
        return tokens, codes, probs

    def _advance(self, user_codes: Any, text: Any, audio: Any, decode: Callable | None, return_logits: bool,
                 extra: bool = False):
        user = self._user_frame(user_codes)
        if self._pending is None:
            self._pending = self._build(0)
        p = self._pending
        if text is not None or audio is not None:
            self._force(p, text, audio)
        self._audio_history.appendleft(p.audio)
        self._user_history.appendleft(user)
        n = self._step
        have_frame = self.config.has_depformer and n >= self._frame_delay
        out = p.text[:, None].astype(mx.int32)
        decoded = None
        if have_frame:
            past = mx.stack(list(self._audio_history))
            frame = mx.take_along_axis(past, self._frame_index[None, None, :], axis=0)[0].astype(mx.int32)
            out = mx.concatenate([out, frame], axis=1)
            if decode is not None:
                decoded = decode(frame)
        if extra:
            decoded = p.extra  # read with the tokens, like a decode
        read = out
        if decoded is not None:
            # One array, one read: tokens are < 2**24, so float32 holds them exactly.
            read = mx.concatenate([out.astype(mx.float32), decoded.reshape(self.batch_size, -1)
                                   .astype(mx.float32)], axis=1)
        self._step += 1
        if self._overlap:
            # Queue this step's result before step n+1 so that reading it does not wait for step n+1.
            mx.async_eval(read)
            self._pending = self._build(self._step)
        # On the CPU, which evaluates inside async_eval, this reads step n before step n+1 is built.
        host = np.array(read)
        if not self._overlap:
            self._pending = self._build(self._step)
        if decoded is not None:
            host, decoded = host[:, :out.shape[1]].astype(np.int32), host[:, out.shape[1]:].reshape(decoded.shape)
        result = (host[:, 0], host[:, 1:] if have_frame else None)
        logits = None
        if return_logits:
            logits = (np.array(p.text_logits[:, -1].astype(mx.float32)), np.array(p.audio_logits))
        return result, decoded, logits
