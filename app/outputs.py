"""Output paths checked before any model work: a run of minutes must not end in a traceback, or in
the user's recording overwritten."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutputPathError(Exception):
    """An output path cannot be used; the message names the flag and says what to do."""


def check_output_files(outputs: dict[str, Path | None], inputs: list[Path], force: bool) -> None:
    """Checks files the run will write, by flag name (`{"--out": path, ...}`; None = not asked for).

    Each must differ from every input and from the others (also when spelled differently), must not be a
    folder, must sit under a folder that exists or can be created (not under a regular file) and can be
    written, and may replace an existing file only with `force`.

    Raises:
        OutputPathError: the first problem found.
    """
    seen: dict[Path, str] = {}
    ins = {_same_file_key(p): p for p in inputs}
    for flag, path in outputs.items():
        if path is None:
            continue
        key = _same_file_key(path)
        if key in ins:
            raise OutputPathError(f"{flag} {path} is the input {ins[key]}: choose another name for the output")
        if key in seen:
            raise OutputPathError(f"{flag} and {seen[key]} both name {path}: give each output its own file")
        seen[key] = flag
        if path.is_dir():
            raise OutputPathError(f"{flag} {path} is a folder: give a file name")
        if path.exists() and not force:
            raise OutputPathError(f"{flag} {path} exists: pass --force to replace it")
        _check_folder(flag, path)


def _same_file_key(path: Path) -> Path:
    """One spelling per file: symlinks, `..` and relative paths resolved (missing parts kept as given)."""
    return Path(os.path.realpath(path.expanduser()))


def _check_folder(flag: str, path: Path) -> None:
    folder = path.expanduser().absolute().parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{flag} {path}: {existing} is a file, not a folder")
    # A missing folder is created when the output is written: its nearest existing folder must allow it.
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".moshi-write-test-"):
            pass  # os.access says yes on read-only mounts and some network folders
    except OSError as e:
        raise OutputPathError(f"{flag} {path}: cannot write in {existing} ({e.strerror})") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Writes a text file whole or not at all: a reader sees the old file or the new one, and a failure
    (a full disk) leaves no partial file behind. A missing folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
