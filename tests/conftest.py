"""Shared test helpers: where the reference fixtures live."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Tests interrupt their subprocesses (the chat, the converter, parec) with SIGINT, as Ctrl-C does. A shell
# that starts the suite in the background (`bash .ci/run &`) leaves SIGINT ignored, and an ignored signal
# stays ignored across exec: give it a handler here, which every exec'd child then resets to the default.
signal.signal(signal.SIGINT, signal.default_int_handler)


def fixture_dir(name: str) -> Path:
    """A committed fixture folder, or a skip naming the command that regenerates it."""
    d = FIXTURES / name
    if not (d / "golden.npz").exists():
        pytest.skip(f"{d} missing: run `bash tests/reference/regenerate.sh`")
    return d


def load_golden(name: str) -> dict[str, np.ndarray]:
    with np.load(fixture_dir(name) / "golden.npz") as z:
        return {k: z[k] for k in z.files}


def full_fixture_dir(name: str) -> Path:
    """A published-size reference folder generated at test time (tests/run.sh sets MOSHI_REF_FULL)."""
    import os

    root = os.environ.get("MOSHI_REF_FULL")
    d = Path(root) / name if root else None
    if d is None or not (d / "golden.npz").exists():
        pytest.skip(f"published-size reference {name} not generated: run `bash tests/run.sh` (not --quick)")
    return d


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A complete tiny random checkpoint folder (see tests/tiny_model.py), built once per session."""
    from tiny_model import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"))


@pytest.fixture(scope="session")
def virtual_card():
    """The virtual full-duplex sound card (PulseAudio), started for the session if it is not up."""
    import subprocess
    import sys

    from card import CARD

    if not sys.platform.startswith("linux"):
        pytest.skip("the virtual sound card is Linux-only")
    if not CARD.exists():
        pytest.skip(f"no virtual sound card at {CARD}")
    if subprocess.run(["which", "pulseaudio"], capture_output=True).returncode != 0:
        pytest.skip("PulseAudio is not installed: `AUDIO_VENV=none bash ../shared/audio-ci/virtual_soundcard.sh install`")
    up = subprocess.run(["bash", str(CARD), "status"], capture_output=True).returncode == 0
    if not up:
        subprocess.run(["bash", str(CARD), "start"], check=True, capture_output=True)
    yield CARD
    if not up:
        subprocess.run(["bash", str(CARD), "stop"], capture_output=True)
