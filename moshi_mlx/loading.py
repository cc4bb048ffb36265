"""One entry point for every app: a hub repo id or a local folder in, everything a conversation needs out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointError, CheckpointFiles, looks_like_pickle, resolve
from .constants import TEXT_TOKENIZER_FILE

DEFAULT_REPO = "kyutai/moshiko-mlx-q4"


class LoadError(Exception):
    """The model could not be loaded; the message is one actionable sentence."""


@dataclass
class LoadedModel:
    """The LM, the codec, the text tokenizer (or None) and where they came from."""

    lm: object
    mimi: object
    tokenizer: object | None
    files: CheckpointFiles

    def engine(self, sampling=None, codec_device: str = "auto"):
        """A conversation on this model (see `moshi_mlx.engine.Engine`)."""
        from .engine import Engine

        return Engine(self.lm, self.mimi, self.tokenizer, sampling, codec_device)

    def transcriber(self, temp: float = 0.0, seed: int | None = None):
        """Streaming speech-to-text on this model (see `moshi_mlx.stt.Transcriber`).

        Raises:
            LoadError: not an STT model (a Moshi or TTS checkpoint), or no tokenizer.
        """
        from .stt import NotAnSttModel, SttSettings, Transcriber

        try:
            settings = SttSettings.from_config(self.files.config_dict(), self.lm.config)
        except NotAnSttModel as e:
            raise LoadError(f"{self.files.source}: {e}") from None
        if self.tokenizer is None:
            raise LoadError(f"{self.files.source}: the text tokenizer is missing (the words are its pieces); "
                            "copy it from the model's hub repo")
        return Transcriber(self.lm, self.mimi, self.tokenizer, settings, temp=temp, seed=seed,
                           model_name=self.files.source)


    def speaker(self, voice: str | Path | None = None, cfg: float = 2.0, temp: float | None = None,
                seed: int | None = None):
        """Streaming text-to-speech on this model (see `moshi_mlx.tts.Speaker`).

        Args:
            voice: a voice name of `kyutai/tts-voices` or a local voice file (default: Kyutai's default voice),
                for models that take one.
            cfg: guidance strength. temp: sampling temperature (default 0.6). seed: sampling seed.

        Raises:
            LoadError: not a TTS model, no tokenizer, a bad voice or cfg value.
        """
        from .tts import NotATtsModel, Speaker, TtsSettings, VoiceError, load_voice
        from .tts.speaker import DEFAULT_TEMP
        from .tts.voice import DEFAULT_VOICE, VOICE_KEY, resolve_voice

        try:
            settings = TtsSettings.from_config(self.files.config_dict(), self.lm.config)
        except NotATtsModel as e:
            raise LoadError(f"{self.files.source}: {e}") from None
        if self.tokenizer is None:
            raise LoadError(f"{self.files.source}: the text tokenizer is missing; copy it from the model's hub repo")
        conditioning = self.lm.config.conditioning
        wants_voice = conditioning is not None and any(s.name == VOICE_KEY for s in conditioning.conditioners)
        voices = []
        try:
            if wants_voice:
                voices = [load_voice(resolve_voice(str(voice or DEFAULT_VOICE), settings.model_id),
                                     settings.model_id)]
            elif voice is not None:
                raise VoiceError(f"{self.files.source} takes no voice; drop it")
            return Speaker(self.lm, self.mimi, self.tokenizer, settings, voices, cfg=cfg,
                           temp=DEFAULT_TEMP if temp is None else temp, seed=seed)
        except (VoiceError, ValueError) as e:
            raise LoadError(str(e)) from None


def load(model: str | Path = DEFAULT_REPO, revision: str | None = None, dtype=None,
         kind: str | None = None, need_tokenizer: bool = False) -> LoadedModel:
    """Loads a Moshi checkpoint, local or from the Hugging Face hub.

    Config comes from the checkpoint's config.json, else the published 7B preset; quantization is read
    from the tensors. No flag has to match the files.

    Args:
        model: hub repo id (e.g. `kyutai/moshiko-mlx-q4`), a checkpoint folder, or an LM weights file.
        revision: hub branch, tag or commit.
        dtype: LM activation dtype (`mx.float32` for parity runs); None keeps the file's; `"auto"` picks
            float32 on the CPU for float checkpoints that fit, else the file's (`moshi_mlx.compute_dtype`);
            `"bf16"` / `"fp32"` name one.
        need_tokenizer: refuse a checkpoint without the text tokenizer, before any weight is read
            (else `tokenizer` is None and the model's words cannot be decoded).
        kind: `"stt"` / `"tts"` checks from config.json, before reading any weights, that the model is
            speech-to-text / text-to-speech.

    Raises:
        LoadError: with one sentence saying what is wrong and what to do.
    """
    from .lm import load_lm
    from .mimi import load_mimi

    try:
        files = resolve(model, revision)
    except CheckpointError as e:
        raise LoadError(str(e)) from None
    if kind is not None:
        _check_kind(files, kind)
    if need_tokenizer and files.tokenizer is None:
        raise LoadError(_missing_tokenizer(files))
    if isinstance(dtype, str):
        dtype = _named_dtype(dtype, files.lm)
    try:
        lm = load_lm(files.lm, dtype=dtype, config=files.config)
    except (ValueError, OSError) as e:
        raise LoadError(_unreadable(files.lm, e)) from None
    cfg = lm.config
    try:
        mimi = load_mimi(files.mimi, num_codebooks=max(cfg.dep_q, cfg.user_q))
    except (ValueError, OSError) as e:
        raise LoadError(_unreadable(files.mimi, e)) from None
    # Read every weight now: a damaged file fails here rather than mid-conversation, and arrays left
    # lazy would belong to this thread's MLX stream, unusable from an inference thread.
    import mlx.core as mx

    try:
        mx.eval(lm.parameters(), mimi.parameters())
    except (RuntimeError, ValueError) as e:
        raise LoadError(f"{files.lm.parent}: cannot read the weights ({_one_line(e)})") from None
    tokenizer = None
    if files.tokenizer is not None:
        import sentencepiece

        try:
            tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(files.tokenizer))
        except Exception as e:  # sentencepiece raises OSError/RuntimeError variants for bad files
            raise LoadError(f"{files.tokenizer}: not a sentencepiece model ({_one_line(e)})") from None
    return LoadedModel(lm, mimi, tokenizer, files)


def _named_dtype(name: str, lm_file: Path):
    import mlx.core as mx

    from .compute_dtype import choose

    if name not in ("auto", "bf16", "fp32"):
        raise LoadError(f"unknown dtype {name!r}: use auto, bf16 or fp32")
    chosen = choose(name, lm_file, on_gpu=mx.default_device().type == mx.DeviceType.gpu)
    return None if chosen is None else {"bf16": mx.bfloat16, "fp32": mx.float32}[chosen]


def _check_kind(files: CheckpointFiles, kind: str) -> None:
    """From config.json alone (cheap): a model of `kind` ("stt", "tts"), or a one-line LoadError saying
    what it is instead."""
    from .lm.config import LmConfig

    if kind == "stt":
        from .stt import NotAnSttModel as wrong_kind, SttSettings as settings
        what = "speech-to-text"
    elif kind == "tts":
        from .tts import NotATtsModel as wrong_kind, TtsSettings as settings
        what = "text-to-speech"
    else:
        raise ValueError(f"unknown model kind {kind!r}: use 'stt' or 'tts'")
    try:
        raw = files.config_dict()
        cfg = LmConfig.from_dict(raw) if raw is not None else LmConfig.preset("moshi_7b")
        settings.from_config(raw, cfg)
    except (wrong_kind, CheckpointError, ValueError) as e:
        raise LoadError(f"{files.source} is not a {what} model: {_one_line(e)}") from None


def _missing_tokenizer(files: CheckpointFiles) -> str:
    try:
        name = (files.config_dict() or {}).get("tokenizer_name", TEXT_TOKENIZER_FILE)
    except CheckpointError:
        name = TEXT_TOKENIZER_FILE
    where = files.lm.parent if Path(files.source).exists() else files.source
    return (f"{where}: the text tokenizer {name} is missing, so Moshi's words could not be read; copy it from "
            "the model's hub repo (e.g. kyutai/moshiko-mlx-q4) into the folder")


def _unreadable(path: Path, e: BaseException) -> str:
    """One line for a weights file that failed to load; a renamed PyTorch pickle is named as such."""
    if looks_like_pickle(path):
        return (f"{path}: a PyTorch pickle checkpoint, refused (unpickling can run arbitrary code); use the "
                "model's .safetensors weights, or convert it: moshi-mlx-convert SRC --out DIR")
    return f"{path}: {_one_line(e)}"


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
