"""The Moshi LM configuration, in Kyutai's config.json schema, and named presets.

`LmConfig.from_dict` reads the keys Kyutai's `LMModel(**lm_kwargs)` takes and ignores the others, so a
config.json of a Hibiki/STT/TTS repo or a test config can be passed as is. Only the architecture this
package implements is accepted: a feature it does not implement raises a one-line `ValueError` instead of
silently computing something else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .conditioning import ConditioningConfig

_SUPPORTED_NORM = "rms_norm_f32"
_SUPPORTED_GATING = "silu"
_SUPPORTED_POS_EMB = ("rope",)
_SUPPORTED_DEP_POS_EMB = ("none",)
# Kyutai's gating rule: a feed-forward of exactly 4 * dim gets this hidden width instead of 2/3 of it.
_FF_FOUR_TIMES_NUM, _FF_FOUR_TIMES_DEN = 21, 8


def swiglu_hidden(dim: int, dim_feedforward: int) -> int:
    """Width of one half of a SwiGLU `linear_in` output, as Kyutai's `ActivationGating` computes it."""
    if dim_feedforward == 4 * dim:
        return (_FF_FOUR_TIMES_NUM * dim) // _FF_FOUR_TIMES_DEN
    return (2 * dim_feedforward) // 3


@dataclasses.dataclass(frozen=True)
class LmConfig:
    """Architecture of a Moshi LM (temporal transformer + depth transformer).

    Field names follow Kyutai's config.json. `delays` lists one delay per stream: text first, then the
    `n_q` audio streams (Moshi's `dep_q` codebooks, then the user's). `dep_q` 0 is a text-only model
    (Kyutai's STT: no depth transformer, every audio stream is read); `extra_heads_num_heads` linear heads
    of width `extra_heads_dim` read the temporal output (the STT's voice-activity / end-of-turn heads).
    """

    dim: int = 4096
    text_card: int = 32000
    n_q: int = 16
    dep_q: int = 8
    card: int = 2048
    num_heads: int = 32
    num_layers: int = 32
    hidden_scale: float = 4.125
    context: int = 3000
    max_period: float = 10000.0
    delays: tuple[int, ...] = (0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1)
    depformer_dim: int = 1024
    depformer_dim_feedforward: int | None = int(4.125 * 1024)
    depformer_num_heads: int = 16
    depformer_num_layers: int = 6
    depformer_weights_per_step: bool = True
    depformer_weights_per_step_schedule: tuple[int, ...] | None = None
    depformer_multi_linear: bool = True
    depformer_pos_emb: str = "none"
    existing_text_padding_id: int = 3
    existing_text_end_padding_id: int = 0
    norm: str = _SUPPORTED_NORM
    gating: str = _SUPPORTED_GATING
    positional_embedding: str = "rope"
    layer_scale: float | None = None
    depformer_layer_scale: float | None = None
    depformer_low_rank_embeddings: int | None = None
    demux_second_stream: bool = False
    text_card_out: int | None = None
    kv_repeat: int = 1
    cross_attention: bool = False
    extra_heads_num_heads: int = 0
    extra_heads_dim: int = 6
    conditioning: ConditioningConfig | None = None

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so the config stays hashable and immutable.
        object.__setattr__(self, "delays", tuple(int(d) for d in self.delays))
        if self.depformer_weights_per_step_schedule is not None:
            object.__setattr__(
                self, "depformer_weights_per_step_schedule",
                tuple(int(i) for i in self.depformer_weights_per_step_schedule))
        self._validate()

    def _validate(self) -> None:
        unsupported = {
            "norm": (self.norm, self.norm == _SUPPORTED_NORM),
            "gating": (self.gating, self.gating == _SUPPORTED_GATING),
            "positional_embedding": (self.positional_embedding,
                                     self.positional_embedding in _SUPPORTED_POS_EMB),
            "depformer_pos_emb": (self.depformer_pos_emb, self.depformer_pos_emb in _SUPPORTED_DEP_POS_EMB),
            "layer_scale": (self.layer_scale, self.layer_scale is None),
            "depformer_layer_scale": (self.depformer_layer_scale, self.depformer_layer_scale is None),
            "depformer_low_rank_embeddings": (self.depformer_low_rank_embeddings,
                                              self.depformer_low_rank_embeddings is None
                                              or self.depformer_low_rank_embeddings > 0),
            "text_card_out": (self.text_card_out, self.text_card_out in (None, self.text_card)),
            "kv_repeat": (self.kv_repeat, self.kv_repeat == 1),
            "depformer_dim_feedforward": (self.depformer_dim_feedforward,
                                          not isinstance(self.depformer_dim_feedforward, (list, tuple))),
        }
        for name, (value, ok) in unsupported.items():
            if not ok:
                raise ValueError(f"LM config: {name}={value!r} is not supported by moshi_mlx.lm")
        if len(self.delays) != self.n_q + 1:
            raise ValueError(f"LM config: expected {self.n_q + 1} delays (text + n_q), got {len(self.delays)}")
        if not 0 <= self.dep_q <= self.n_q:
            # dep_q 0: a text-only model with no depth transformer (Kyutai's STT).
            raise ValueError(f"LM config: dep_q={self.dep_q} must be in 0..n_q={self.n_q}")
        if self.extra_heads_num_heads < 0 or self.extra_heads_dim < 1:
            raise ValueError("LM config: extra_heads_num_heads must be >= 0 and extra_heads_dim >= 1")
        if min(self.delays) < 0:
            raise ValueError("LM config: delays must be >= 0")
        if self.dim % self.num_heads or self.depformer_dim % self.depformer_num_heads:
            raise ValueError("LM config: dim must be a multiple of num_heads (and likewise for the depformer)")
        if self.context is None or self.context < 1:
            raise ValueError(f"LM config: context must be a positive int, got {self.context!r}")
        schedule = self.depformer_weights_per_step_schedule
        if schedule is not None and len(schedule) != self.dep_q:
            raise ValueError(f"LM config: depformer_weights_per_step_schedule needs {self.dep_q} entries")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LmConfig":
        """Builds a config from Kyutai's schema, ignoring keys this package does not use."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "demux_second_text_stream" in data:
            kwargs["demux_second_stream"] = data["demux_second_text_stream"]
        if isinstance(data.get("conditioning"), ConditioningConfig):
            kwargs["conditioning"] = data["conditioning"]
        elif data.get("conditioners"):
            kwargs["conditioning"] = ConditioningConfig.from_dict(data["conditioners"], data.get("fuser"))
        else:
            kwargs.pop("conditioning", None)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "LmConfig":
        """Reads a config.json in Kyutai's schema."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"LM config file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"LM config {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"LM config {path} must hold a JSON object")
        return cls.from_dict(data)

    @classmethod
    def preset(cls, name: str) -> "LmConfig":
        """A named preset for checkpoints that ship no config.json (see `PRESETS`)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown LM preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None

    def to_dict(self) -> dict[str, Any]:
        """The config in Kyutai's schema (JSON-ready)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "conditioning"}
        if self.conditioning is not None:
            out.update(self.conditioning.to_dict())
        out["delays"] = list(self.delays)
        if self.depformer_weights_per_step_schedule is not None:
            out["depformer_weights_per_step_schedule"] = list(self.depformer_weights_per_step_schedule)
        return out

    # Derived quantities: one place computes them.
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def depformer_head_dim(self) -> int:
        return self.depformer_dim // self.depformer_num_heads

    @property
    def hidden(self) -> int:
        """SwiGLU hidden width of the temporal transformer (11264 for the 7B)."""
        return swiglu_hidden(self.dim, int(self.hidden_scale * self.dim))

    @property
    def depformer_hidden(self) -> int:
        """SwiGLU hidden width of the depformer (2816 for the 7B)."""
        ff = self.depformer_dim_feedforward
        if ff is None:
            ff = int(self.hidden_scale * self.depformer_dim)
        return swiglu_hidden(self.depformer_dim, int(ff))

    @property
    def user_q(self) -> int:
        """Audio streams the model reads but does not generate (the user's codebooks)."""
        return self.n_q - self.dep_q

    @property
    def text_delay(self) -> int:
        return self.delays[0]

    @property
    def audio_delays(self) -> tuple[int, ...]:
        """Delays of the generated (Moshi) codebooks."""
        return self.delays[1:1 + self.dep_q]

    @property
    def user_delays(self) -> tuple[int, ...]:
        return self.delays[1 + self.dep_q:]

    @property
    def max_delay(self) -> int:
        """Steps after which Moshi's full frame is out (max over the generated streams)."""
        return max(self.delays[:1 + self.dep_q])

    def _scheduled_index(self, k: int, per_step: bool) -> int:
        """Codebook `k`'s entry among per-step parts: 0 when shared, else its slot in the schedule (or k)."""
        if not per_step:
            return 0
        if self.depformer_weights_per_step_schedule is not None:
            return self.depformer_weights_per_step_schedule[k]
        return k

    def depformer_weight_index(self, k: int) -> int:
        """Index of the per-step weight set that depformer codebook `k` uses."""
        return self._scheduled_index(k, self.depformer_weights_per_step)

    @property
    def depformer_num_weight_sets(self) -> int:
        return max((self.depformer_weight_index(k) for k in range(self.dep_q)), default=-1) + 1

    @property
    def has_depformer(self) -> bool:
        """False for text-only models (dep_q 0): nothing generates audio."""
        return self.dep_q > 0

    def depformer_in_index(self, k: int) -> int:
        """Index of the `depformer_in` projection that codebook `k` uses."""
        return self._scheduled_index(k, self.depformer_multi_linear)


MOSHI_7B = LmConfig()
"""Moshiko/Moshika 7B (202409): Kyutai's `moshi.models.loaders._lm_kwargs`."""

PRESETS: dict[str, LmConfig] = {
    "moshi_7b": MOSHI_7B,
    "moshiko_7b": MOSHI_7B,
    "moshika_7b": MOSHI_7B,
}
