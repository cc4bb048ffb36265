"""Streaming text-to-speech with Kyutai's TTS models (`kyutai/tts-1.6b-en_fr`, voices in `kyutai/tts-voices`).

    from moshi_mlx import load
    speaker = load("kyutai/tts-1.6b-en_fr", kind="tts").speaker(voice="path/or/name")
    speech = speaker.synthesize("Hello world.")
"""

from .machine import NEW_WORD, PAD, MachineState, StateMachine
from .script import Entry, script_entries
from .settings import NotATtsModel, TtsSettings
from .speaker import Speaker, Speech
from .voice import MAX_SPEAKERS, Voice, VoiceError, load_voice, speaker_condition, voice_suffix

__all__ = ["Entry", "MAX_SPEAKERS", "MachineState", "NEW_WORD", "NotATtsModel", "PAD", "Speaker", "Speech",
           "StateMachine", "TtsSettings", "Voice", "VoiceError", "load_voice", "script_entries",
           "speaker_condition", "voice_suffix"]
