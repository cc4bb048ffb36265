"""Streaming speech-to-text with Kyutai's STT models (`kyutai/stt-1b-en_fr`, `kyutai/stt-2.6b-en`).

    from moshi_mlx import load
    stt = load("kyutai/stt-1b-en_fr-candle").transcriber()
    print(stt.transcribe(pcm).text)      # pcm: float32 mono 24 kHz
"""

from .settings import END_OF_TURN_HEAD, NotAnSttModel, SttSettings
from .transcriber import Transcriber, Transcript
from .words import TimedWord, WordAligner, words_from_tokens

__all__ = ["END_OF_TURN_HEAD", "NotAnSttModel", "SttSettings", "TimedWord", "Transcriber", "Transcript",
           "WordAligner", "words_from_tokens"]
