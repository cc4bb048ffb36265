"""The streaming protocol of an STT checkpoint, read from its config.json (`stt_config`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..constants import FRAME_RATE, TEXT_EPAD, TEXT_PAD

END_OF_TURN_HEAD = 2
"""Extra head whose class 0 is the end-of-turn probability (as Kyutai's voice agent reads it)."""


class NotAnSttModel(ValueError):
    """The checkpoint is not a speech-to-text model; the message says what it is and what to use."""


@dataclass(frozen=True)
class SttSettings:
    """How audio is framed for the model (Kyutai's DSM protocol).

    The model writes the text of the audio `audio_delay_seconds` behind it and was trained with
    `silence_prefix_seconds` of silence before the audio: a stream is that many whole silent frames, the
    audio, then enough silent frames to flush the delay.
    """

    audio_delay_seconds: float
    silence_prefix_seconds: float
    pad_id: int = TEXT_PAD
    epad_id: int = TEXT_EPAD

    @classmethod
    def from_config(cls, raw: dict | None, lm_config) -> "SttSettings":
        """From a checkpoint's config.json dict and its `LmConfig`.

        Raises:
            NotAnSttModel: a model that writes audio (Moshi, Hibiki, TTS) or has no `stt_config`.
        """
        if lm_config.dep_q:
            raise NotAnSttModel(f"it generates speech (dep_q={lm_config.dep_q}): a speech-to-speech or TTS model, "
                                "not speech-to-text; pass an STT model such as kyutai/stt-1b-en_fr-candle")
        stt = (raw or {}).get("stt_config")
        if not isinstance(stt, dict) or "audio_delay_seconds" not in stt:
            raise NotAnSttModel("its config.json has no stt_config (audio_delay_seconds); pass an STT model "
                                "such as kyutai/stt-1b-en_fr-candle, with its config.json")
        try:
            delay = float(stt["audio_delay_seconds"])
            prefix = float(stt.get("audio_silence_prefix_seconds", 0.0))
            pad = int((raw or {}).get("text_padding_token_id", lm_config.existing_text_padding_id))
        except (TypeError, ValueError):
            raise NotAnSttModel("its stt_config holds non-numeric values; fix config.json") from None
        if not (math.isfinite(delay) and math.isfinite(prefix)) or delay < 0 or prefix < 0:
            raise NotAnSttModel("its stt_config delays must be finite and >= 0; fix config.json")
        return cls(delay, prefix, pad)

    @property
    def prefix_frames(self) -> int:
        """Silent frames fed before the audio."""
        return math.ceil(self.silence_prefix_seconds * FRAME_RATE)

    @property
    def flush_frames(self) -> int:
        """Silent frames fed after the audio, so that the model writes its last words."""
        return math.ceil(self.audio_delay_seconds * FRAME_RATE)

    @property
    def offset_seconds(self) -> float:
        """Subtracted from step times to put words on the audio's timeline (DSM's formula, whole seconds of
        prefix: with the 1 s prefix of 13 frames the words come out 40 ms early, as in Kyutai's tools)."""
        return int(self.prefix_frames / FRAME_RATE) + self.audio_delay_seconds
