"""Finding a checkpoint's files, in a local folder or on the Hugging Face hub.

A checkpoint is an LM weights file, the Mimi codec file and the text tokenizer, plus an optional
config.json in Kyutai's schema (whose `moshi_name`, `mimi_name` and `tokenizer_name` keys, when present,
name the files). Kyutai's MLX repos ship no config.json and exactly one of `model.safetensors`,
`model.q8.safetensors`, `model.q4.safetensors`. Hub downloads go through `huggingface_hub` (its cache,
`HF_HUB_OFFLINE`, revisions, progress bars) and fetch only the files needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .constants import LM_FILES, MIMI_FILE, TEXT_TOKENIZER_FILE

# Preference when a folder holds several LM files: the smallest that was shipped on purpose.
LM_CANDIDATES = (LM_FILES["q4"], LM_FILES["q8"], LM_FILES["bf16"])
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


class CheckpointError(Exception):
    """A checkpoint cannot be found or used; the message is one actionable sentence."""


@dataclass(frozen=True)
class CheckpointFiles:
    """Paths of one checkpoint's files on local disk."""

    lm: Path
    mimi: Path
    tokenizer: Path | None
    config: Path | None
    source: str

    def config_dict(self) -> dict | None:
        return None if self.config is None else _read_json(self.config)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the config must be a JSON object")
    return data


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: PyTorch pickle files are refused (unpickling a download can run "
                              "code); use the .safetensors weights")


def resolve(model: str | Path, revision: str | None = None) -> CheckpointFiles:
    """Finds (and downloads where needed) the files of a checkpoint.

    Args:
        model: a local folder, a local LM weights file (the other files beside it), or a hub repo id
            such as `kyutai/moshiko-mlx-q4`.
        revision: hub branch, tag or commit (hub only).

    Raises:
        CheckpointError: anything missing, with what to do about it.
    """
    path = Path(model).expanduser()
    if path.exists():
        return _resolve_local(path)
    text = str(model)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not text.endswith(
            (".safetensors", ".json")):
        return _resolve_hub(text, revision)
    raise CheckpointError(f"{model}: no such file or folder (and not a hub repo id like "
                          "kyutai/moshiko-mlx-q4)")


def _resolve_local(path: Path) -> CheckpointFiles:
    _refuse_pickle(path)
    folder, lm = (path, None) if path.is_dir() else (path.parent, path)
    config = folder / "config.json"
    cfg = _read_json(config) if config.is_file() else {}
    if lm is None:
        named = cfg.get("moshi_name")
        options = [named] if named else list(LM_CANDIDATES)
        found = [folder / n for n in options if (folder / n).is_file()]
        if not found:
            pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
            hint = f" (found {pickles[0]}: pickle files are refused)" if pickles else ""
            raise CheckpointError(f"{folder}: no LM weights ({' or '.join(options)}){hint}; download a "
                                  "model, e.g. `moshi-mlx-chat --model kyutai/moshiko-mlx-q4`")
        lm = found[0]
    mimi = folder / cfg.get("mimi_name", MIMI_FILE)
    if not mimi.is_file():
        raise CheckpointError(f"{folder}: the Mimi codec file {mimi.name} is missing; copy it from the "
                              "model's hub repo (e.g. kyutai/moshiko-mlx-q4)")
    tokenizer = folder / cfg.get("tokenizer_name", TEXT_TOKENIZER_FILE)
    return CheckpointFiles(lm, mimi, tokenizer if tokenizer.is_file() else None,
                           config if config.is_file() else None, str(path))


def _resolve_hub(repo: str, revision: str | None) -> CheckpointFiles:
    try:
        import huggingface_hub as hf
        from huggingface_hub import errors as hf_errors
    except ImportError:  # pragma: no cover - a declared dependency
        raise CheckpointError("huggingface-hub is not installed: `pip install huggingface-hub`") from None

    online = _hub_reachable()
    listing = _list_repo(hf, hf_errors, repo, revision) if online else None

    def fetch(name: str, required: bool) -> Path | None:
        if listing is not None and name not in listing:
            if required:
                raise CheckpointError(f"{repo}: the repo has no file {name}")
            return None
        try:
            return Path(hf.hf_hub_download(repo, name, revision=revision, local_files_only=not online))
        except hf_errors.LocalEntryNotFoundError:
            if required:
                raise CheckpointError(f"{repo}: {name} is not in the local Hugging Face cache and the hub "
                                      "cannot be reached (offline or HF_HUB_OFFLINE=1); connect once to "
                                      "download it") from None
            return None
        except (hf_errors.EntryNotFoundError, hf_errors.RemoteEntryNotFoundError):
            if required:
                raise CheckpointError(f"{repo}: the repo has no file {name}") from None
            return None
        except hf_errors.RevisionNotFoundError:
            raise CheckpointError(f"{repo}: no revision {revision!r} on the hub") from None
        except hf_errors.RepositoryNotFoundError:
            raise CheckpointError(f"{repo}: no such model repo on the Hugging Face hub (check the name; "
                                  "private repos need `hf auth login`)") from None

    config = fetch("config.json", required=False)
    cfg = _read_json(config) if config else {}
    if cfg.get("moshi_name"):
        lm = fetch(cfg["moshi_name"], required=True)
    else:
        lm = None
        for name in LM_CANDIDATES:
            lm = fetch(name, required=False)
            if lm is not None:
                break
        if lm is None and not online:
            raise CheckpointError(f"{repo} is not downloaded yet and the Hugging Face hub cannot be reached: "
                                  "connect to the internet once to download it, or pass --model a local "
                                  "checkpoint folder")
        if lm is None:
            raise CheckpointError(f"{repo}: no LM weights ({' / '.join(LM_CANDIDATES)}) in the repo; "
                                  "check the repo id")
    _refuse_pickle(lm)
    mimi = fetch(cfg.get("mimi_name", MIMI_FILE), required=True)
    tokenizer = fetch(cfg.get("tokenizer_name", TEXT_TOKENIZER_FILE), required=False)
    return CheckpointFiles(lm, mimi, tokenizer, config, repo)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub endpoint.

    Without it, a machine with no network waits minutes while huggingface_hub retries every file with
    back-off; with it, such a machine goes straight to the local cache.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _list_repo(hf, hf_errors, repo: str, revision: str | None) -> set[str] | None:
    """The repo's file names, or None when they cannot be listed (the cache then decides what exists)."""
    try:
        return set(hf.list_repo_files(repo, revision=revision))
    except hf_errors.RepositoryNotFoundError:
        raise CheckpointError(f"{repo}: no such model repo on the Hugging Face hub (check the name; "
                              "private repos need `hf auth login`)") from None
    except hf_errors.RevisionNotFoundError:
        raise CheckpointError(f"{repo}: no revision {revision!r} on the hub") from None
    except Exception:  # no network: fall back to the cache, whose errors say what is missing
        return None
