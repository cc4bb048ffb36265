"""Finding what to convert: the LM weights, and the config, Mimi and tokenizer files that travel with them.

SRC is a local `.safetensors` file (its folder holds the other files), a local folder, or a Hugging Face hub
repo id (`kyutai/moshiko-pytorch-bf16`; downloads go through huggingface_hub's cache, so a second run is
offline). Unlike `moshi_mlx.checkpoint.resolve`, which picks the smallest LM a folder ships for inference,
conversion wants the bf16 weights and does not need the Mimi or tokenizer files (they are copied when present).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from moshi_mlx.checkpoint import PICKLE_SUFFIXES
from moshi_mlx.constants import LM_FILES, MIMI_FILE, TEXT_TOKENIZER_FILE

from . import ConvertError

CONFIG_FILE = "config.json"
# Conversion starts from full-precision weights; the quantized names are looked up only to refuse them clearly.
LM_PREFERENCE = (LM_FILES["bf16"], LM_FILES["q8"], LM_FILES["q4"])
PROBE_TIMEOUT_S = 3.0
_HTTPS_PORT, _HTTP_PORT = 443, 80
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class SourceFiles:
    """Local paths of the files of one source checkpoint (None: the source has no such file)."""

    lm: Path
    config: Path | None
    mimi: Path | None
    tokenizer: Path | None
    origin: str

    @property
    def folder(self) -> Path:
        return self.lm.parent


def read_config(path: Path) -> dict:
    """A config.json as a dict, or a one-line error."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConvertError(f"{path}: not a readable JSON config ({e}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: the config must be a JSON object; fix or remove it")
    return data


def _refuse_pickle(path: Path) -> None:
    # By name only: a pickle misnamed .safetensors is refused by `read_header`, which never unpickles either.
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ConvertError(f"{path}: PyTorch pickle checkpoints are refused (unpickling can run arbitrary code); "
                           "convert from the model's .safetensors weights (e.g. kyutai/moshiko-pytorch-bf16)")


def resolve_source(src: str, revision: str | None = None) -> SourceFiles:
    """Finds (downloading where needed) the files of the checkpoint to convert.

    Raises:
        ConvertError: nothing found, a pickle file, or the hub unreachable with nothing cached.
    """
    path = Path(src).expanduser()
    if path.exists():
        return _resolve_local(path, src)
    if src.count("/") == 1 and not src.startswith((".", "/", "~")) and not src.endswith(
            (".safetensors", ".json") + PICKLE_SUFFIXES):
        return _resolve_hub(src, revision)
    raise ConvertError(f"{src}: no such file or folder (and not a hub repo id like kyutai/moshiko-pytorch-bf16); "
                       "check the path")


def _resolve_local(path: Path, origin: str) -> SourceFiles:
    if path.is_file():
        _refuse_pickle(path)
        folder, lm = path.parent, path
    else:
        folder, lm = path, None
    config = folder / CONFIG_FILE
    cfg = read_config(config) if config.is_file() else {}
    if lm is None:
        options = [cfg["moshi_name"]] if cfg.get("moshi_name") else list(LM_PREFERENCE)
        found = [folder / n for n in options if (folder / n).is_file()]
        if not found:
            pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
            if pickles:
                _refuse_pickle(pickles[0])
            raise ConvertError(f"{folder}: no LM weights ({' or '.join(options)}); pass the folder or file "
                               "holding the model's .safetensors weights")
        lm = found[0]
        _refuse_pickle(lm)

    def optional(name: str) -> Path | None:
        p = folder / name
        return p if p.is_file() else None

    return SourceFiles(lm, optional(CONFIG_FILE), optional(cfg.get("mimi_name", MIMI_FILE)),
                       optional(cfg.get("tokenizer_name", TEXT_TOKENIZER_FILE)), origin)


def _hub_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the hub opens within a few seconds.

    Without this probe an offline machine waits for huggingface_hub's retries (about 25 s per request, and
    printed warnings) before falling back to the cache. Behind a proxy the probe proves nothing: assume online.
    """
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return True
    url = urlparse(endpoint)
    port = url.port or (_HTTPS_PORT if url.scheme == "https" else _HTTP_PORT)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _resolve_hub(repo: str, revision: str | None) -> SourceFiles:
    import huggingface_hub as hf
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import errors as hfe

    no_repo = (f"{repo}: no such model repo on the Hugging Face hub (check the name; private repos need "
               "`hf auth login`)")
    offline = ("in the local Hugging Face cache, and the hub cannot be reached (offline or HF_HUB_OFFLINE=1); "
               "connect to the network once to download it")
    online = not hf_constants.HF_HUB_OFFLINE and _hub_reachable(hf_constants.ENDPOINT)
    try:
        listing = set(hf.list_repo_files(repo, revision=revision)) if online else None
    except hfe.RepositoryNotFoundError:
        raise ConvertError(no_repo) from None
    except hfe.RevisionNotFoundError:
        raise ConvertError(f"{repo}: no revision {revision!r} on the hub; check --revision") from None
    except hfe.HFValidationError:
        raise ConvertError(f"{repo}: not a valid hub repo id (expected owner/name)") from None
    except Exception:  # the hub failed us after all: the cache decides what exists
        listing, online = None, False

    def fetch(name: str, required: bool) -> Path | None:
        if listing is not None and name not in listing:
            if required:
                raise ConvertError(f"{repo}: the repo has no file {name}; check the repo id")
            return None
        try:
            return Path(hf.hf_hub_download(repo, name, revision=revision, local_files_only=not online))
        except hfe.RepositoryNotFoundError:
            raise ConvertError(no_repo) from None
        except hfe.RevisionNotFoundError:
            raise ConvertError(f"{repo}: no revision {revision!r} on the hub; check --revision") from None
        except (hfe.LocalEntryNotFoundError, hfe.EntryNotFoundError, hfe.RemoteEntryNotFoundError):
            if required:
                raise ConvertError(f"{repo}: {name} is not {offline}") from None
            return None
        except Exception as e:  # the connection dropped mid-download, a full cache disk, ...
            raise ConvertError(f"{repo}: downloading {name} failed ({type(e).__name__}: {e}); check the network "
                               "and disk, then run again (huggingface_hub resumes the download)") from None

    config = fetch(CONFIG_FILE, required=False)
    cfg = read_config(config) if config else {}
    names = [cfg["moshi_name"]] if cfg.get("moshi_name") else list(LM_PREFERENCE)
    lm = None
    for name in names:
        if listing is not None and name in listing and name != LM_FILES["bf16"] and not cfg.get("moshi_name"):
            # Known from the listing alone: refuse before downloading gigabytes of quantized weights.
            raise ConvertError(f"{repo}: the repo holds only quantized weights ({name}); convert from a bf16 "
                               "repo such as kyutai/moshiko-pytorch-bf16 or kyutai/moshiko-mlx-bf16")
        if listing is None or name in listing:
            lm = fetch(name, required=listing is not None)
            if lm is not None:
                break
    if lm is None:
        if listing is None:
            raise ConvertError(f"{repo}: no LM weights ({' / '.join(names)}) {offline}")
        raise ConvertError(f"{repo}: the repo has no LM weights ({' / '.join(names)}); check the repo id")
    _refuse_pickle(lm)
    return SourceFiles(lm, config, fetch(cfg.get("mimi_name", MIMI_FILE), required=False),
                       fetch(cfg.get("tokenizer_name", TEXT_TOKENIZER_FILE), required=False), repo)
