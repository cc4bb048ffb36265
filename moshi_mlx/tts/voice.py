"""Voices of Kyutai's TTS: speaker embeddings that the model cross-attends to.

A voice file (`kyutai/tts-voices`: `<name>.wav.<sig>@<epoch>.safetensors`) holds `speaker_wavs`
`[1, 512, 125]` float32, computed for one model: its `<sig>@<epoch>` must match the model's
config.json `model_id`. The model reads up to `MAX_SPEAKERS` voices, each `[125, 512]`, side by side in
one `[MAX_SPEAKERS * 125, 512]` tensor with a mask: empty slots (and every slot of the null condition of
classifier-free guidance) are masked and take the conditioner's learnt padding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

MAX_SPEAKERS = 5
VOICE_KEY = "speaker_wavs"
_SIGNATURE = re.compile(r"\.([0-9A-Za-z_-]+)@(\d+)\.safetensors$")


class VoiceError(ValueError):
    """The voice cannot be used; the message says why."""


@dataclass(frozen=True)
class Voice:
    """One speaker embedding `[frames, dim]` and where it came from."""

    embedding: mx.array
    source: str


def voice_suffix(model_id: dict | None) -> str:
    """`.<sig>@<epoch>.safetensors` for a config's `model_id`, or "" when it has none."""
    if not model_id or "sig" not in model_id:
        return ""
    return f".{model_id['sig']}@{model_id.get('epoch', 0)}.safetensors"


def load_voice(path: Path, model_id: dict | None = None) -> Voice:
    """Reads a voice file, checking that it was made for the model with `model_id`.

    Raises:
        VoiceError: missing or unreadable file, another model's voice, or not a voice tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise VoiceError(f"{path}: no such voice file")
    found = _SIGNATURE.search(path.name)
    want = voice_suffix(model_id)
    if found and want and not path.name.endswith(want):
        raise VoiceError(f"{path.name} is a voice for model {found.group(1)}@{found.group(2)}, this model is "
                         f"{want[1:-len('.safetensors')]}: use its own voices")
    try:
        tensors, metadata = mx.load(str(path), return_metadata=True)
    except Exception as e:  # mlx raises several types for foreign files
        raise VoiceError(f"{path}: not a voice file ({type(e).__name__}: {e})") from None
    # Kyutai's voice files also name their model in the metadata: a renamed file is caught here.
    if model_id and "sig" in (metadata or {}) and "sig" in model_id and (
            str(metadata["sig"]), str(metadata.get("epoch", ""))) != (str(model_id["sig"]),
                                                                      str(model_id.get("epoch", ""))):
        raise VoiceError(f"{path.name} is a voice for model {metadata['sig']}@{metadata.get('epoch', '?')} (its "
                         f"metadata), this model is {model_id['sig']}@{model_id.get('epoch', '?')}: use its own voices")
    emb = tensors.get(VOICE_KEY) if isinstance(tensors, dict) else None
    if emb is None or emb.ndim != 3 or emb.shape[0] != 1:
        raise VoiceError(f"{path}: no {VOICE_KEY} tensor [1, dim, frames] in it")
    return Voice(emb[0].T.astype(mx.float32), str(path))


def speaker_condition(voices: list[Voice], dim: int, frames: int | None = None, null: bool = False
                      ) -> tuple[mx.array, mx.array]:
    """`(tensor [1, MAX_SPEAKERS * frames, dim], mask [1, MAX_SPEAKERS * frames])` for the conditioner.

    `null` gives the all-masked (zeros) condition of classifier-free guidance.
    """
    if len(voices) > MAX_SPEAKERS:
        raise VoiceError(f"at most {MAX_SPEAKERS} voices, got {len(voices)}")
    if frames is None:
        frames = voices[0].embedding.shape[0] if voices else 0
    slots, masks = [], []
    for i in range(MAX_SPEAKERS):
        if i < len(voices) and not null:
            emb = voices[i].embedding
            if emb.shape != (frames, dim):
                raise VoiceError(f"{voices[i].source}: embedding {list(emb.shape)}, the model takes "
                                 f"[{frames}, {dim}]")
            slots.append(emb)
            masks.append(mx.ones((frames,), dtype=mx.bool_))
        else:
            slots.append(mx.zeros((frames, dim), dtype=mx.float32))
            masks.append(mx.zeros((frames,), dtype=mx.bool_))
    return mx.concatenate(slots)[None], mx.concatenate(masks)[None]


DEFAULT_VOICE_REPO = "kyutai/tts-voices"
DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"


def resolve_voice(voice: str, model_id: dict | None, repo: str = DEFAULT_VOICE_REPO) -> Path:
    """A voice file: `voice` itself when it is a local .safetensors file, else `<voice><suffix>` from the
    hub repo of voices (the Hugging Face cache when offline).

    Raises:
        VoiceError: neither a local file nor a voice of the repo (or not downloadable now).
    """
    path = Path(voice).expanduser()
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise VoiceError(f"{voice}: no such voice file")
        return path
    from ..checkpoint import _hub_reachable

    import huggingface_hub as hf

    name = voice + voice_suffix(model_id)
    online = _hub_reachable()
    try:
        return Path(hf.hf_hub_download(repo, name, local_files_only=not online))
    except Exception as e:  # not found, offline and not cached, a failed download
        what = "is not downloaded yet and the hub cannot be reached" if not online else f"is not in {repo}"
        raise VoiceError(f"voice {voice!r} ({name}) {what} ({type(e).__name__}); pass a voice name of {repo} "
                         "or a local .safetensors voice file") from None
