"""Typed configuration of the Mimi codec, in Kyutai's schema.

`MimiConfig.from_dict` reads the dict that Kyutai's `moshi.models.loaders.get_mimi` takes
(`{sample_rate, channels, frame_rate, seanet{..}, quantizer{..}, transformer{..}}`), ignoring keys it does not
know, and `MimiConfig.published()` is the published checkpoint (`tokenizer-e351c8d8-checkpoint125`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..constants import AUDIO_CARD, FRAME_RATE, MIMI_CODEBOOKS, SAMPLE_RATE
from .errors import MimiConfigError

PUBLISHED_NAME = "tokenizer-e351c8d8-checkpoint125"
"""Name of the published Mimi checkpoint that `MimiConfig.published()` describes."""


@dataclass(frozen=True)
class SeanetConfig:
    """The convolutional encoder/decoder (SEANet); the decoder mirrors the encoder.

    Attributes:
        channels: Audio channels (Mimi: mono).
        dimension: Width of the latent at the encoder frame rate.
        n_filters: Channels after the first conv; doubled by each down-sampling stage.
        n_residual_layers: Residual blocks per stage.
        ratios: Strides in decoder order (the encoder applies them reversed).
        kernel_size: Kernel of the first conv.
        residual_kernel_size: Kernel of the first conv of each residual block.
        last_kernel_size: Kernel of the last conv.
        dilation_base: Dilation of the j-th residual block is `dilation_base ** j`.
        compress: Residual branches run at `dim // compress` channels.
        true_skip: Identity shortcut in residual blocks (the only supported choice).
        causal: Causal convolutions (the only supported choice).
        pad_mode: Left padding of the convs ("constant": zeros).
    """

    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    n_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    true_skip: bool = True
    causal: bool = True
    pad_mode: str = "constant"

    @property
    def hop_length(self) -> int:
        """Audio samples per latent step of the encoder."""
        return math.prod(self.ratios)


@dataclass(frozen=True)
class QuantizerConfig:
    """Split residual vector quantizer.

    Attributes:
        dimension: Codebook vector size.
        n_q: Codebooks stored (semantic + acoustic).
        bins: Entries per codebook.
        n_q_semantic: Codebooks of `rvq_first` (Mimi: 1).
        input_dimension: Latent width fed to the input projections.
        output_dimension: Latent width produced by the output projections.
    """

    dimension: int = 256
    n_q: int = MIMI_CODEBOOKS
    bins: int = AUDIO_CARD
    n_q_semantic: int = 1
    input_dimension: int = 512
    output_dimension: int = 512


@dataclass(frozen=True)
class TransformerConfig:
    """The causal transformer run on each side of the quantizer, at the encoder frame rate.

    Attributes:
        d_model: Width of the residual stream.
        num_heads: Attention heads.
        num_layers: Layers.
        dim_feedforward: Hidden width of the GELU feed-forward.
        context: Attention window in tokens: a query sees the last `context` positions.
        layer_scale: Initial LayerScale value; None means no LayerScale weights.
        max_period: RoPE maximum period.
        input_dimension: Width of the incoming latent (a projection is added if it differs from d_model).
        output_dimension: Width of the outgoing latent (likewise).
    """

    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250
    layer_scale: float | None = 0.01
    max_period: float = 10_000.0
    input_dimension: int = 512
    output_dimension: int = 512

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.num_heads


@dataclass(frozen=True)
class MimiConfig:
    """Full Mimi codec configuration.

    Attributes:
        sample_rate: Audio sample rate in Hz.
        channels: Audio channels.
        frame_rate: Code frames per second.
        seanet: Convolutional encoder/decoder.
        quantizer: Split RVQ.
        transformer: Encoder and decoder transformers (same shape on both sides).
    """

    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    frame_rate: float = FRAME_RATE
    seanet: SeanetConfig = field(default_factory=SeanetConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def published(cls) -> "MimiConfig":
        """The published Mimi (`tokenizer-e351c8d8-checkpoint125`)."""
        return cls()

    @property
    def encoder_frame_rate(self) -> float:
        """Latent steps per second of the SEANet encoder (25 Hz for the published Mimi)."""
        return self.sample_rate / self.seanet.hop_length

    @property
    def frame_size(self) -> int:
        """Audio samples per code frame (1920 for the published Mimi)."""
        return round(self.sample_rate / self.frame_rate)

    @property
    def resample_stride(self) -> int:
        """Encoder latent steps per code frame (the learnt down/up-sampling stride)."""
        return round(self.encoder_frame_rate / self.frame_rate)

    def validate(self) -> None:
        """Check that the numbers fit together.

        Raises:
            MimiConfigError: with the first inconsistency found.
        """
        s, q, t = self.seanet, self.quantizer, self.transformer
        positive = {
            "sample_rate": self.sample_rate, "channels": self.channels, "seanet.dimension": s.dimension,
            "seanet.n_filters": s.n_filters, "seanet.compress": s.compress, "quantizer.dimension": q.dimension,
            "quantizer.n_q": q.n_q, "quantizer.bins": q.bins, "transformer.d_model": t.d_model,
            "transformer.num_heads": t.num_heads, "transformer.dim_feedforward": t.dim_feedforward,
            "transformer.context": t.context,
        }
        for name, value in positive.items():
            if value <= 0:
                raise MimiConfigError(f"Mimi config: {name} must be positive, got {value}.")
        if not s.ratios or any(r <= 0 for r in s.ratios):
            raise MimiConfigError(f"Mimi config: seanet.ratios must be positive integers, got {list(s.ratios)}.")
        if self.frame_rate <= 0 or self.sample_rate / self.frame_rate != self.frame_size:
            raise MimiConfigError(
                f"Mimi config: sample_rate / frame_rate = {self.sample_rate}/{self.frame_rate} must be an integer.")
        if self.encoder_frame_rate / self.frame_rate != self.resample_stride or self.resample_stride < 1:
            raise MimiConfigError(
                f"Mimi config: the encoder rate {self.encoder_frame_rate} Hz (sample_rate / prod(seanet.ratios)) "
                f"must be an integer multiple of frame_rate {self.frame_rate} Hz.")
        if t.d_model % t.num_heads or t.head_dim % 2:
            raise MimiConfigError(
                f"Mimi config: transformer.d_model {t.d_model} must split into {t.num_heads} heads of even width.")
        if not 1 <= q.n_q_semantic < q.n_q:
            raise MimiConfigError(
                f"Mimi config: quantizer.n_q_semantic {q.n_q_semantic} must be in 1..n_q-1 (n_q = {q.n_q}).")
        if q.input_dimension != s.dimension or q.output_dimension != s.dimension:
            raise MimiConfigError(
                f"Mimi config: quantizer input/output_dimension must equal seanet.dimension {s.dimension}.")
        if t.input_dimension != s.dimension or t.output_dimension != s.dimension:
            raise MimiConfigError(
                f"Mimi config: transformer input/output dimension must equal seanet.dimension {s.dimension}.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MimiConfig":
        """Build a config from Kyutai's schema; unknown keys are ignored.

        Options this implementation does not support (non-causal convs, reflect padding, weight-norm
        parametrisation, gated feed-forward, RMSNorm, sinusoidal positions...) raise instead of being ignored.

        Raises:
            MimiConfigError: on a missing section, a bad value or an unsupported option.
        """
        if not isinstance(d, Mapping):
            raise MimiConfigError(f"Mimi config must be a JSON object, got {type(d).__name__}.")
        sections = {}
        for name in ("seanet", "quantizer", "transformer"):
            sec = d.get(name, {})
            if not isinstance(sec, Mapping):
                raise MimiConfigError(f"Mimi config: '{name}' must be an object, got {type(sec).__name__}.")
            sections[name] = sec
        sea, qua, tra = sections["seanet"], sections["quantizer"], sections["transformer"]
        _require(sea, "causal", True, "only causal Mimi is supported")
        _require(sea, "activation", "ELU", "only ELU activations are supported")
        _require(sea, "norm", "none", "weights must have weight norm folded in (norm 'none')")
        _require(sea, "true_skip", True, "only identity shortcuts are supported")
        _require(sea, "disable_norm_outer_blocks", 0, "norm options are not supported")
        _require(sea, "pad_mode", "constant", "only zero (constant) padding is supported")
        _require(tra, "causal", True, "only a causal transformer is supported")
        _require(tra, "gating", "none", "only the plain GELU feed-forward is supported")
        _require(tra, "norm", "layer_norm", "only LayerNorm is supported")
        _require(tra, "positional_embedding", "rope", "only RoPE is supported")
        _require(tra, "conv_layout", True, "only conv layout is supported")
        _require(tra, "kv_repeat", 1, "grouped-query attention is not supported")
        for key in ("bias_ff", "bias_attn"):
            _require(tra, key, False, "biases in the transformer are not supported")
        outs = tra.get("output_dimensions")
        if outs is not None and len(outs) != 1:
            raise MimiConfigError(f"Mimi config: transformer.output_dimensions must hold one width, got {outs}.")
        seanet_kw = _pick(SeanetConfig, sea)
        if "ratios" in sea:
            try:
                seanet_kw["ratios"] = tuple(int(r) for r in sea["ratios"])
            except (TypeError, ValueError):
                raise MimiConfigError(
                    f"Mimi config: seanet.ratios={sea['ratios']!r} is not a list of integers.") from None
        seanet = _build(SeanetConfig, seanet_kw)
        transformer = _build(TransformerConfig, {
            **_pick(TransformerConfig, tra),
            "input_dimension": int(tra.get("input_dimension", seanet.dimension)),
            "output_dimension": int(outs[0]) if outs is not None else seanet.dimension,
        })
        quantizer = _build(QuantizerConfig, {
            **_pick(QuantizerConfig, qua),
            "input_dimension": int(qua.get("input_dimension", seanet.dimension)),
            "output_dimension": int(qua.get("output_dimension", seanet.dimension)),
        })
        top = _pick(cls, d, skip=("seanet", "quantizer", "transformer"))
        return _build(cls, {**top, "seanet": seanet, "quantizer": quantizer, "transformer": transformer})


def _require(section: Mapping[str, Any], key: str, expected: Any, why: str) -> None:
    if key in section and section[key] != expected:
        raise MimiConfigError(f"Mimi config: {key}={section[key]!r} is not supported ({why}).")


def _pick(cls: type, d: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of `d` that name scalar fields of dataclass `cls`, coerced to the field's type."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name not in d or f.name == "ratios":
            continue
        value = d[f.name]
        try:
            if f.type == "int":
                value = int(value)
            elif f.type == "float":
                value = float(value)
            elif f.type == "float | None":
                value = None if value is None else float(value)
            elif f.type == "bool":
                value = bool(value)
        except (TypeError, ValueError):
            raise MimiConfigError(f"Mimi config: {f.name}={value!r} is not a valid {f.type}.") from None
        kwargs[f.name] = value
    return kwargs


def _build(cls: type, kwargs: dict[str, Any]):
    try:
        return cls(**kwargs)
    except TypeError as e:  # a field without a default was not given
        raise MimiConfigError(f"Mimi config: {e}.") from None
