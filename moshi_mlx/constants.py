"""Facts of the published Moshi models that every room of the library shares.

One place knows each number: import from here rather than writing 24000 or 1920.
"""

SAMPLE_RATE = 24_000
"""Mimi's audio sample rate, in Hz (mono)."""

FRAME_SIZE = 1920
"""Samples in one Mimi frame: 80 ms at 24 kHz."""

FRAME_RATE = SAMPLE_RATE / FRAME_SIZE
"""Mimi frames (and LM steps) per second: 12.5."""

FRAME_MS = 1000.0 * FRAME_SIZE / SAMPLE_RATE
"""The real-time budget of one step, in milliseconds: 80."""

ENCODER_FRAME_RATE = 25.0
"""Rate of the SEANet latent before the learnt 2x down-sampling, in Hz."""

AUDIO_CARD = 2048
"""Entries per Mimi codebook."""

MIMI_CODEBOOKS = 32
"""Codebooks stored in the published Mimi checkpoint."""

MOSHI_CODEBOOKS = 8
"""Codebooks per audio stream that Moshi models (Moshi's voice and the user's)."""

AUDIO_INITIAL_TOKEN = AUDIO_CARD
"""Token fed for an audio stream before its first frame exists (= card)."""

TEXT_CARD = 32_000
"""Text vocabulary of the published models (sentencepiece 32k)."""

TEXT_INITIAL_TOKEN = TEXT_CARD
"""Text token fed at step 0 (= text_card)."""

TEXT_PAD = 3
"""Text padding token: the inner monologue is silent this step."""

TEXT_EPAD = 0
"""End-of-padding token: a word starts at the next step."""

ZERO_TOKEN = -1
"""Input token meaning "no input": its embedding is a zero vector."""

DEFAULT_TEXT_TEMP = 0.7
DEFAULT_TEXT_TOP_K = 25
DEFAULT_AUDIO_TEMP = 0.8
DEFAULT_AUDIO_TOP_K = 250

MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
TEXT_TOKENIZER_FILE = "tokenizer_spm_32k_3.model"
LM_FILES = {
    "bf16": "model.safetensors",
    "q8": "model.q8.safetensors",
    "q4": "model.q4.safetensors",
}
