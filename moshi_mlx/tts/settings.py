"""The generation settings of a TTS checkpoint: from its config.json (`tts_config`, `model_id`) and the
defaults of Kyutai's `TTSModel.from_checkpoint_info` / `run_tts`, which change the output."""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import FRAME_RATE


class NotATtsModel(ValueError):
    """The checkpoint is not a text-to-speech model; the message says what it is and what to use."""


@dataclass(frozen=True)
class TtsSettings:
    """`delay_steps`: how far the audio trails the text (16 steps = 1.28 s for Kyutai's 1.6B);
    `second_stream_ahead`: the lookahead of the second text stream (0: none)."""

    delay_steps: int
    second_stream_ahead: int = 0
    max_padding: int = 8
    initial_padding: int = 2
    final_padding: int = 4
    padding_between: int = 1
    padding_bonus: float = 0.0
    model_id: dict | None = None

    @classmethod
    def from_config(cls, raw: dict | None, lm_config) -> "TtsSettings":
        raw = raw or {}
        tts = raw.get("tts_config")
        if lm_config.dep_q == 0:
            raise NotATtsModel("it writes no audio (dep_q=0): a speech-to-text model; pass a TTS model such as "
                               "kyutai/tts-1.6b-en_fr")
        if not isinstance(tts, dict) or "audio_delay" not in tts:
            raise NotATtsModel("its config.json has no tts_config (audio_delay): a speech-to-speech model, not "
                               "text-to-speech; pass a TTS model such as kyutai/tts-1.6b-en_fr")
        if lm_config.n_q != lm_config.dep_q:
            raise NotATtsModel(f"it reads {lm_config.n_q - lm_config.dep_q} input audio streams; Kyutai's TTS "
                               "models read none")
        if tts.get("multistream"):
            raise NotATtsModel("multistream TTS models are not supported")
        try:
            delay = int(float(tts["audio_delay"]) * FRAME_RATE)
            ahead = int(tts.get("second_stream_ahead", 0))
        except (TypeError, ValueError):
            raise NotATtsModel("its tts_config holds non-numeric values; fix config.json") from None
        model_id = raw.get("model_id") if isinstance(raw.get("model_id"), dict) else None
        return cls(delay, ahead, model_id=model_id)
