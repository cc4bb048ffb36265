"""Mimi: 24 kHz audio <-> 12.5 Hz discrete codes, in batch or one 80 ms frame at a time.

Streaming state is explicit: `make_encode_state` / `make_decode_state` create it, `encode_step` /
`decode_step` advance it in place, and a new state is the only way to start over. The batch calls run the same
layers on a fresh state over chunks of many frames, so streaming and batch results agree. The steps run as
`mx.compile`d pure functions of the state's arrays (`compiled.py`), one fused graph per frame and side.

Data flow (channels-last `[B, T, C]` inside):
    encode: SEANet encoder (25 Hz) -> transformer -> learnt 2x down-sampling (12.5 Hz) -> split RVQ codes
    decode: split RVQ sum -> depthwise 2x transposed up-sampling (25 Hz) -> transformer -> SEANet decoder
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..constants import MOSHI_CODEBOOKS
from .config import MimiConfig
from .conv import ConvState, ConvTransposeState, StreamingConv1d, StreamingConvTranspose1d
from .checks import check_codes, check_pcm, check_positive_int
from .compiled import CompiledSteps, set_state_arrays, state_arrays
from .errors import MimiInputError
from .quantizer import SplitResidualVQ
from .seanet import SeanetDecoder, SeanetEncoder, SeanetState
from .transformer import ProjectedTransformer, TransformerState

BATCH_CHUNK_FRAMES = 125
"""Frames (10 s) per chunk on the batch path: bounds activation memory for long files."""


@dataclass
class EncodeState:
    """Streaming state of the encoder side for `batch_size` streams (see `Mimi.make_encode_state`).

    Attributes:
        batch_size: Streams advanced together.
        encoder: Per-layer conv histories of the SEANet encoder.
        transformer: KV rings and position of the encoder transformer.
        downsample: History (and first-call flag) of the learnt down-sampling conv.
        frames: Frames encoded so far (host-side count, not an input of the compiled step).
    """

    batch_size: int
    encoder: SeanetState
    transformer: TransformerState
    downsample: ConvState
    frames: int = 0


@dataclass
class DecodeState:
    """Streaming state of the decoder side for `batch_size` streams (see `Mimi.make_decode_state`).

    Attributes:
        batch_size: Streams advanced together.
        upsample: Pending output of the transposed up-sampling conv.
        transformer: KV rings and position of the decoder transformer.
        decoder: Per-layer states of the SEANet decoder.
        frames: Frames decoded so far (host-side count, not an input of the compiled step).
    """

    batch_size: int
    upsample: ConvTransposeState
    transformer: TransformerState
    decoder: SeanetState
    frames: int = 0


class Mimi(nn.Module):
    """The Mimi codec. Build it with `load_mimi`; a bare `Mimi(cfg)` holds zero weights.

    Args:
        cfg: Codec shape.
        num_codebooks: Codebooks produced by `encode` (1 .. cfg.quantizer.n_q).

    Attributes:
        compile_steps: Run `encode_step` / `decode_step` as compiled graphs (default). False runs the same
            layers eagerly, op by op (for debugging; the results agree to float rounding).
    """

    def __init__(self, cfg: MimiConfig, num_codebooks: int = MOSHI_CODEBOOKS):
        super().__init__()
        if not isinstance(num_codebooks, int) or not 1 <= num_codebooks <= cfg.quantizer.n_q:
            raise MimiInputError(f"num_codebooks must be an integer in 1..{cfg.quantizer.n_q}, got {num_codebooks!r}.")
        self.cfg = cfg
        self.num_codebooks = num_codebooks
        dim, stride = cfg.seanet.dimension, cfg.resample_stride
        self.encoder = SeanetEncoder(cfg.seanet)
        self.decoder = SeanetDecoder(cfg.seanet)
        self.encoder_transformer = ProjectedTransformer(cfg.transformer, step=stride)
        self.decoder_transformer = ProjectedTransformer(cfg.transformer, step=stride)
        self.quantizer = SplitResidualVQ(cfg.quantizer)
        # 25 -> 12.5 Hz: learnt conv whose first call pads with the first sample, not zeros.
        self.downsample = StreamingConv1d(dim, dim, 2 * stride, stride=stride, bias=False, replicate_pad=True)
        self.upsample = StreamingConvTranspose1d(dim, dim, 2 * stride, stride=stride, bias=False, depthwise=True)
        self.compile_steps = True

    @property
    def frame_size(self) -> int:
        """Audio samples per code frame (1920)."""
        return self.cfg.frame_size

    @property
    def sample_rate(self) -> int:
        """Audio sample rate in Hz (24000)."""
        return self.cfg.sample_rate

    @property
    def dtype(self) -> mx.Dtype:
        """Dtype of the weights, used for activations and states."""
        return self.encoder.model[0].weight.dtype

    # ----------------------------------------------------------------- states

    def make_encode_state(self, batch_size: int = 1) -> EncodeState:
        """Fresh encoder state for `batch_size` streams; pass it to every `encode_step` of those streams.

        Its arrays are evaluated, so any thread may use it.
        """
        check_positive_int(batch_size, "batch_size")
        state = self._new_encode_state(batch_size)
        mx.eval(state_arrays(state))
        return state

    def make_decode_state(self, batch_size: int = 1) -> DecodeState:
        """Fresh decoder state for `batch_size` streams; pass it to every `decode_step` of those streams.

        Its arrays are evaluated, so any thread may use it.
        """
        check_positive_int(batch_size, "batch_size")
        state = self._new_decode_state(batch_size)
        mx.eval(state_arrays(state))
        return state

    def _new_encode_state(self, batch_size: int) -> EncodeState:
        dt = self.dtype
        return EncodeState(batch_size, self.encoder.make_state(batch_size, dt),
                           self.encoder_transformer.make_state(batch_size, dt),
                           self.downsample.make_state(batch_size, dt))

    def _new_decode_state(self, batch_size: int) -> DecodeState:
        dt = self.dtype
        return DecodeState(batch_size, self.upsample.make_state(batch_size, dt),
                           self.decoder_transformer.make_state(batch_size, dt),
                           self.decoder.make_state(batch_size, dt))

    # ----------------------------------------------------------------- batch

    def encode(self, pcm: mx.array, chunk_frames: int = BATCH_CHUNK_FRAMES) -> mx.array:
        """Encode whole clips.

        Args:
            pcm: float audio `[B, channels, T]`, T a positive multiple of `frame_size`.
            chunk_frames: Frames processed per chunk (memory bound only; the result does not depend on it).

        Returns:
            int32 codes `[B, num_codebooks, T // frame_size]`.

        Raises:
            MimiInputError: on a wrong type, rank, dtype, channel count or length.
        """
        x = check_pcm(pcm, self.cfg)
        check_positive_int(chunk_frames, "chunk_frames")
        state = self._new_encode_state(x.shape[0])
        step = chunk_frames * self.frame_size
        chunks = []
        for start in range(0, x.shape[2], step):
            codes = self._encode_chunk(x[:, :, start:start + step], state)
            if x.shape[2] > step:
                mx.eval(codes)  # keep one chunk of activations alive at a time
            chunks.append(codes)
        return chunks[0] if len(chunks) == 1 else mx.concatenate(chunks, axis=2)

    def encode_latent(self, pcm: mx.array) -> mx.array:
        """The continuous latent the quantizer sees, before quantization.

        Args:
            pcm: float audio `[B, channels, T]`, T a positive multiple of `frame_size`.

        Returns:
            `[B, dimension, T // frame_size]` in the model dtype.
        """
        x = check_pcm(pcm, self.cfg)
        return self._latent(x, self._new_encode_state(x.shape[0])).transpose(0, 2, 1)

    def decode(self, codes: mx.array, chunk_frames: int = BATCH_CHUNK_FRAMES) -> mx.array:
        """Decode whole code sequences.

        Args:
            codes: integer codes `[B, K, F]`, 1 <= K <= total codebooks, values in 0..bins-1.
            chunk_frames: Frames processed per chunk (memory bound only).

        Returns:
            float32 audio `[B, channels, F * frame_size]`.

        Raises:
            MimiInputError: on a wrong type, rank, dtype, codebook count or out-of-range code.
        """
        codes = check_codes(codes, self.cfg)
        check_positive_int(chunk_frames, "chunk_frames")
        state = self._new_decode_state(codes.shape[0])
        chunks = []
        for start in range(0, codes.shape[2], chunk_frames):
            pcm = self._decode_chunk(codes[:, :, start:start + chunk_frames], state)
            if codes.shape[2] > chunk_frames:
                mx.eval(pcm)
            chunks.append(pcm)
        return chunks[0] if len(chunks) == 1 else mx.concatenate(chunks, axis=2)

    # ----------------------------------------------------------------- streaming

    def encode_step(self, pcm: mx.array, state: EncodeState) -> mx.array:
        """Encode the next frame of each stream.

        Args:
            pcm: float audio `[B, channels, frame_size]`, B = `state.batch_size`.
            state: From `make_encode_state`; advanced in place.

        Returns:
            int32 codes `[B, num_codebooks, 1]`.
        """
        if not isinstance(state, EncodeState):
            raise MimiInputError(
                f"encode_step needs the EncodeState from make_encode_state, got {type(state).__name__}.")
        x = check_pcm(pcm, self.cfg, frames=1, batch_size=state.batch_size)
        if self.compile_steps:
            codes, arrays = self._compiled().encode(x, state_arrays(state))
            set_state_arrays(state, arrays)
        else:
            codes = self._encode_chunk(x, state)
        state.frames += 1
        return codes

    def encode_frames(self, pcm: mx.array, state: EncodeState) -> mx.array:
        """Encode the next F frames of each stream at once: the codes of F `encode_step` calls, faster.

        Args:
            pcm: float audio `[B, channels, F * frame_size]`, B = `state.batch_size`.
            state: From `make_encode_state`; advanced in place by F frames.

        Returns:
            int32 codes `[B, num_codebooks, F]` (evaluated).
        """
        if not isinstance(state, EncodeState):
            raise MimiInputError(
                f"encode_frames needs the EncodeState from make_encode_state, got {type(state).__name__}.")
        x = check_pcm(pcm, self.cfg)
        if x.shape[0] != state.batch_size:
            raise MimiInputError(f"pcm holds {x.shape[0]} streams, the state {state.batch_size}.")
        codes = self._encode_chunk(x, state)
        # Evaluated with the state so that no lazy graph of one chunk is kept alive by the next.
        mx.eval(codes, state_arrays(state))
        state.frames += x.shape[2] // self.frame_size
        return codes

    def decode_step(self, codes: mx.array, state: DecodeState, check_range: bool = True) -> mx.array:
        """Decode the next frame of each stream.

        Args:
            codes: integer codes `[B, K, 1]`, B = `state.batch_size`.
            state: From `make_decode_state`; advanced in place.
            check_range: Verify every code is in 0..bins-1, which reads two scalars back from the device (a host
                sync). A hot loop decoding codes it sampled itself may pass False to stay asynchronous; an
                out-of-range code then gives undefined audio instead of an error.

        Returns:
            float32 audio `[B, channels, frame_size]`.
        """
        if not isinstance(state, DecodeState):
            raise MimiInputError(
                f"decode_step needs the DecodeState from make_decode_state, got {type(state).__name__}.")
        codes = check_codes(codes, self.cfg, frames=1, batch_size=state.batch_size, check_range=check_range)
        if self.compile_steps:
            pcm, arrays = self._compiled().decode(codes, state_arrays(state))
            set_state_arrays(state, arrays)
        else:
            pcm = self._decode_chunk(codes, state)
        state.frames += 1
        return pcm

    # ----------------------------------------------------------------- internals

    def _compiled(self) -> CompiledSteps:
        # Values the traces read through `self` are frozen into them: key on them too.
        return CompiledSteps.for_model(
            self, (self.num_codebooks, self.cfg), encode=self._encode_chunk, decode=self._decode_chunk,
            new_encode_state=self._new_encode_state, new_decode_state=self._new_decode_state)

    def _latent(self, pcm: mx.array, state: EncodeState) -> mx.array:
        """Audio `[B, C, T]` -> latent `[B, T / frame_size, dimension]`; advances `state` (not `frames`)."""
        x = pcm.transpose(0, 2, 1)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        h = self.encoder(x, state.encoder)
        h = self.encoder_transformer(h, state.transformer)
        return self.downsample(h, state.downsample)

    def _encode_chunk(self, pcm: mx.array, state: EncodeState) -> mx.array:
        return self.quantizer.encode(self._latent(pcm, state), self.num_codebooks)

    def _decode_chunk(self, codes: mx.array, state: DecodeState) -> mx.array:
        h = self.quantizer.decode(codes)
        if h.dtype != self.dtype:
            h = h.astype(self.dtype)
        h = self.upsample(h, state.upsample)
        h = self.decoder_transformer(h, state.transformer)
        y = self.decoder(h, state.decoder).transpose(0, 2, 1)
        return y if y.dtype == mx.float32 else y.astype(mx.float32)
