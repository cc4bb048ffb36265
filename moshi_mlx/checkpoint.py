"""Finding a checkpoint's files, in a local folder or on the Hugging Face hub.

A checkpoint is an LM weights file, the Mimi codec file and the text tokenizer, plus an optional
config.json in Kyutai's schema (whose `moshi_name`, `mimi_name` and `tokenizer_name` keys, when present,
name the files). Kyutai's MLX repos ship no config.json and exactly one of `model.safetensors`,
`model.q8.safetensors`, `model.q4.safetensors`. Hub downloads go through `huggingface_hub` (its cache,
`HF_HUB_OFFLINE`, revisions, progress bars) and fetch only the files needed. Used by every app and by the
converter, which asks for other LM files (`lm_names`) and no Mimi.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .constants import LM_FILES, MIMI_FILE, TEXT_TOKENIZER_FILE

CONFIG_FILE = "config.json"
# For inference, the smallest LM a folder ships on purpose.
LM_CANDIDATES = (LM_FILES["q4"], LM_FILES["q8"], LM_FILES["bf16"])
QUANTIZED_LM_FILES = (LM_FILES["q4"], LM_FILES["q8"])
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
PROBE_TIMEOUT_S = 3.0
# The hub's own rule for `owner/name` (huggingface_hub validate_repo_id), checked here so that a typo is
# reported as a typo, not as a network failure.
_REPO_ID = re.compile(r"[A-Za-z0-9_.-]{1,96}/[A-Za-z0-9_.-]{1,96}")
# Starts of PyTorch pickles: a torch.save zip archive, or a bare pickle stream (protocol 2+).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class CheckpointError(Exception):
    """A checkpoint cannot be found or used; the message is one actionable sentence."""


@dataclass(frozen=True)
class CheckpointFiles:
    """Paths of one checkpoint's files on local disk (None: the checkpoint has no such file)."""

    lm: Path
    mimi: Path | None
    tokenizer: Path | None
    config: Path | None
    source: str

    def config_dict(self) -> dict | None:
        return None if self.config is None else read_config(self.config)


def read_config(path: Path) -> dict:
    """A config.json as a dict, or a one-line CheckpointError."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON config ({e}); fix or remove it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the config must be a JSON object; fix or remove it")
    return data


def refuse_pickle(path: Path) -> None:
    """By name: pickles are never opened (a pickle misnamed .safetensors fails the safetensors header check)."""
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: PyTorch pickle files are refused (unpickling a download can run code); "
                              "use the model's .safetensors weights")


def starts_like_pickle(start: bytes) -> bool:
    """Whether a file's first bytes are those of a PyTorch pickle (a zip archive or a pickle stream).

    Ask only once the file failed to parse as safetensors: a real header length may start with 0x80.
    """
    return start.startswith(_ZIP_MAGIC) or start[:1] == _PICKLE_PROTO


def looks_like_pickle(path: Path) -> bool:
    """`starts_like_pickle` for a file, whatever its name (False when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return starts_like_pickle(f.read(len(_ZIP_MAGIC)))
    except OSError:
        return False


def is_hub_repo_id(text: str) -> bool:
    """`owner/name` as the hub spells repo ids: letters, digits, `-`, `_`, `.`; no `--` or `..`; not
    starting or ending with `-` or `.`."""
    if not _REPO_ID.fullmatch(text) or "--" in text or ".." in text:
        return False
    return all(part[0] not in "-." and part[-1] not in "-." for part in text.split("/"))


def resolve(model: str | Path, revision: str | None = None, *, lm_names: tuple[str, ...] = LM_CANDIDATES,
            need_mimi: bool = True, refuse_quantized: bool = False) -> CheckpointFiles:
    """Finds (and downloads where needed) the files of a checkpoint.

    Args:
        model: a local folder, a local LM weights file (the other files beside it), or a hub repo id
            such as `kyutai/moshiko-mlx-q4`.
        revision: hub branch, tag or commit (hub only).
        lm_names: LM file names to look for, in order of preference (config.json's `moshi_name` wins).
        need_mimi: fail when the Mimi file is missing (else `mimi` is None).
        refuse_quantized: fail, before downloading, on a hub repo that holds only quantized weights.

    Raises:
        CheckpointError: anything missing, with what to do about it.
    """
    path = Path(model).expanduser()
    if path.exists():
        return _resolve_local(path, str(model), lm_names, need_mimi)
    text = str(model)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not text.endswith(
            (".safetensors", ".json") + PICKLE_SUFFIXES):
        if not is_hub_repo_id(text):
            raise CheckpointError(f"{text!r}: no such file or folder, and not a hub repo id (owner/name in letters, "
                                  "digits, '-', '_' and '.'); check the spelling")
        return _resolve_hub(text, revision, lm_names, need_mimi, refuse_quantized)
    raise CheckpointError(f"{model}: no such file or folder (and not a hub repo id like "
                          "kyutai/moshiko-mlx-q4); check the path")


def _resolve_local(path: Path, source: str, lm_names: tuple[str, ...], need_mimi: bool) -> CheckpointFiles:
    refuse_pickle(path)
    folder, lm = (path, None) if path.is_dir() else (path.parent, path)
    config = folder / CONFIG_FILE
    cfg = read_config(config) if config.is_file() else {}
    if lm is None:
        options = [cfg["moshi_name"]] if cfg.get("moshi_name") else list(lm_names)
        found = [folder / n for n in options if (folder / n).is_file()]
        if not found:
            for p in sorted(folder.iterdir()):
                refuse_pickle(p)  # a folder of .pt files: say why it cannot be used
            raise CheckpointError(f"{folder}: no LM weights ({' or '.join(options)}); pass the folder or file "
                                  "holding the model's .safetensors weights")
        lm = found[0]
    mimi = folder / cfg.get("mimi_name", MIMI_FILE)
    if need_mimi and not mimi.is_file():
        raise CheckpointError(f"{folder}: the Mimi codec file {mimi.name} is missing; copy it from the "
                              "model's hub repo (e.g. kyutai/moshiko-mlx-q4)")
    tokenizer = folder / cfg.get("tokenizer_name", TEXT_TOKENIZER_FILE)
    return CheckpointFiles(lm, mimi if mimi.is_file() else None, tokenizer if tokenizer.is_file() else None,
                           config if config.is_file() else None, source)


def _resolve_hub(repo: str, revision: str | None, lm_names: tuple[str, ...], need_mimi: bool,
                 refuse_quantized: bool) -> CheckpointFiles:
    import huggingface_hub as hf
    from huggingface_hub import errors as hfe

    no_repo = f"{repo}: no such model repo on the Hugging Face hub (check the name; private repos need `hf auth login`)"
    no_revision = f"{repo}: no revision {revision!r} on the hub; check the revision"
    not_cached = ("not in the local Hugging Face cache and the hub cannot be reached (offline or HF_HUB_OFFLINE=1); "
                  "connect to the internet once to download it")
    online = _hub_reachable()
    listing = None
    if online:
        try:
            listing = set(hf.list_repo_files(repo, revision=revision))
        except hfe.RepositoryNotFoundError:
            raise CheckpointError(no_repo) from None
        except hfe.RevisionNotFoundError:
            raise CheckpointError(no_revision) from None
        except hfe.HFValidationError:
            raise CheckpointError(f"{repo}: not a valid hub repo id (expected owner/name)") from None
        except Exception:  # the hub failed us after all: the cache decides what exists
            online = False

    def fetch(name: str, required: bool) -> Path | None:
        if listing is not None and name not in listing:
            if required:
                raise CheckpointError(f"{repo}: the repo has no file {name}; check the repo id")
            return None
        try:
            return Path(hf.hf_hub_download(repo, name, revision=revision, local_files_only=not online))
        except hfe.RepositoryNotFoundError:
            raise CheckpointError(no_repo) from None
        except hfe.RevisionNotFoundError:
            raise CheckpointError(no_revision) from None
        except (hfe.LocalEntryNotFoundError, hfe.EntryNotFoundError, hfe.RemoteEntryNotFoundError):
            if required:
                raise CheckpointError(f"{repo}: {name} is {not_cached}") from None
            return None
        except Exception as e:  # the connection dropped mid-download, a full disk, ...
            raise CheckpointError(f"{repo}: downloading {name} failed ({type(e).__name__}: {e}); check the network "
                                  "and disk, then run again (the download resumes)") from None

    config = fetch(CONFIG_FILE, required=False)
    cfg = read_config(config) if config else {}
    names = [cfg["moshi_name"]] if cfg.get("moshi_name") else list(lm_names)
    if refuse_quantized and listing is not None and not cfg.get("moshi_name"):
        shipped = [n for n in names if n in listing]
        if shipped and all(n in QUANTIZED_LM_FILES for n in shipped):
            # Known from the listing alone: refuse before downloading gigabytes.
            raise CheckpointError(f"{repo}: the repo holds only quantized weights ({shipped[0]}); use a bf16 repo "
                                  "such as kyutai/moshiko-pytorch-bf16 or kyutai/moshiko-mlx-bf16")
    lm = None
    for name in names:
        lm = fetch(name, required=False)
        if lm is not None:
            break
    if lm is None and not online:
        raise CheckpointError(f"{repo} is not downloaded yet ({' / '.join(names)} {not_cached}), or pass a "
                              "local checkpoint folder")
    if lm is None:
        raise CheckpointError(f"{repo}: the repo has no LM weights ({' / '.join(names)}); check the repo id")
    refuse_pickle(lm)
    mimi = fetch(cfg.get("mimi_name", MIMI_FILE), required=need_mimi)
    tokenizer = fetch(cfg.get("tokenizer_name", TEXT_TOKENIZER_FILE), required=False)
    return CheckpointFiles(lm, mimi, tokenizer, config, repo)


def _hub_reachable() -> bool:
    """One quick TCP connect to the hub endpoint.

    Without it, a machine with no network waits minutes while huggingface_hub retries every file with
    back-off; with it, such a machine goes straight to the local cache. Behind a proxy the probe proves
    nothing: assume online.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return True
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False
