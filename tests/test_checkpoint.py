"""Finding checkpoint files locally and in a Hugging Face cache laid out as huggingface_hub lays it out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moshi_mlx.checkpoint import CheckpointError, resolve
from moshi_mlx.constants import MIMI_FILE, TEXT_TOKENIZER_FILE

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """models--owner--name/{refs/main, blobs/, snapshots/<commit>/<file> -> ../../blobs/<hash>}."""
    import hashlib

    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)
    snap = base / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (base / "blobs").mkdir()
    for name, data in files.items():
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    return root


def resolve_offline(cache: Path, model: str) -> subprocess.CompletedProcess:
    """resolve() in a fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is imported."""
    code = ("import sys; from moshi_mlx.checkpoint import resolve, CheckpointError\n"
            "try:\n f = resolve(sys.argv[1])\n print(f.lm.name, f.mimi.name, f.tokenizer and f.tokenizer.name)\n"
            "except CheckpointError as e:\n print(e, file=sys.stderr); sys.exit(2)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HUB_DISABLE_TELEMETRY="1")
    return subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True, env=env,
                          timeout=60)


def test_local_folder(tmp_path):
    for name in ("model.q8.safetensors", MIMI_FILE, TEXT_TOKENIZER_FILE):
        (tmp_path / name).write_bytes(b"x")
    f = resolve(tmp_path)
    assert f.lm.name == "model.q8.safetensors" and f.mimi.name == MIMI_FILE
    assert f.tokenizer.name == TEXT_TOKENIZER_FILE and f.config is None


def test_local_config_names_the_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"moshi_name": "lm.safetensors", "mimi_name": "m.sft"}))
    for name in ("lm.safetensors", "m.sft", "model.q4.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    f = resolve(tmp_path)
    assert f.lm.name == "lm.safetensors" and f.mimi.name == "m.sft" and f.tokenizer is None


def test_local_weights_file_finds_its_siblings(tmp_path):
    for name in ("model.safetensors", MIMI_FILE):
        (tmp_path / name).write_bytes(b"x")
    f = resolve(tmp_path / "model.safetensors")
    assert f.lm == tmp_path / "model.safetensors" and f.mimi.parent == tmp_path


def test_local_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no LM weights"):
        resolve(tmp_path)
    (tmp_path / "model.q4.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="Mimi codec file"):
        resolve(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pickle files are refused"):
        resolve(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        resolve(tmp_path / "nothing" / "here.safetensors")


def test_hub_cache_offline(tmp_path):
    cache = make_hub_cache(tmp_path / "hub", "kyutai/moshiko-mlx-q4", {
        "model.q4.safetensors": b"lm", MIMI_FILE: b"mimi", TEXT_TOKENIZER_FILE: b"tok"})
    r = resolve_offline(cache, "kyutai/moshiko-mlx-q4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["model.q4.safetensors", MIMI_FILE, TEXT_TOKENIZER_FILE]


def test_hub_cache_offline_missing_file_is_one_line(tmp_path):
    cache = make_hub_cache(tmp_path / "hub", "kyutai/moshiko-mlx-q8", {"model.q8.safetensors": b"lm"})
    r = resolve_offline(cache, "kyutai/moshiko-mlx-q8")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert MIMI_FILE in r.stderr and "connect to the internet once" in r.stderr
    r = resolve_offline(cache, "kyutai/not-downloaded")
    assert r.returncode == 2 and "not downloaded yet" in r.stderr
