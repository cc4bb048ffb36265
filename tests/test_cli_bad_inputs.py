"""What a new user hits (#13), through the installed console scripts: each bad input is refused with one
`error: ...` line naming the flag, file or value, no traceback, the inputs untouched, nothing written,
and before the model's weights are read (bytes read measured from /proc/self/io at the child's exit)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from moshi_mlx.audio import write_wav
from moshi_mlx.constants import MIMI_FILE, SAMPLE_RATE, TEXT_TOKENIZER_FILE

SCRIPTS = Path(sys.executable).parent  # the venv's bin: the console scripts pip installed
ROOT = Path(__file__).resolve().parent.parent
# Written into every child: at exit (SystemExit included) it copies /proc/self/io, whose rchar counts
# every byte the process read through read() calls: Python's imports, the WAV, the weights.
PROBE = """import atexit, os
def _dump():
    with open('/proc/self/io') as f, open(os.environ['MOSHI_TEST_IO'], 'w') as out:
        out.write(f.read())
if os.environ.get('MOSHI_TEST_IO'):
    atexit.register(_dump)
"""

pytestmark = pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/<pid>/io")


@dataclass
class Run:
    code: int
    stderr: str
    rchar: int


def tool(name: str, *args, tmp: Path, env: dict | None = None) -> Run:
    script = SCRIPTS / name
    if not script.exists():
        pytest.skip(f"{script} not installed (pip install -e .)")
    io_file = tmp / "io.txt"
    io_file.unlink(missing_ok=True)
    probe = tmp / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(PROBE)
    full_env = {**os.environ, "PYTHONPATH": str(probe), "MOSHI_TEST_IO": str(io_file), **(env or {})}
    r = subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, env=full_env,
                       cwd=tmp, timeout=300)
    rchar = int(re.search(r"rchar: (\d+)", io_file.read_text()).group(1)) if io_file.exists() else -1
    return Run(r.returncode, r.stderr, rchar)


def state(folder: Path) -> dict:
    """Every file under `folder` with its size and modification time: a change means something was written."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.parent.name != "probe" and p.name != "io.txt"}


@pytest.fixture(scope="module")
def world(tiny_checkpoint, tmp_path_factory):
    """A user's folder: a recording, an existing output, a plain file, and broken model folders."""
    w = tmp_path_factory.mktemp("newcomer")
    write_wav(w / "in.wav", np.zeros(SAMPLE_RATE // 2, np.float32), SAMPLE_RATE)
    write_wav(w / "one-hertz.wav", np.zeros(100, np.float32), 1)
    (w / "taken.wav").write_bytes(b"keep me")
    (w / "plain").write_bytes(b"a file")
    for name, skip in (("no-tokenizer", TEXT_TOKENIZER_FILE), ("pickle", "model.safetensors"),
                       ("mismatch", "config.json")):
        folder = w / name
        folder.mkdir()
        for f in tiny_checkpoint.iterdir():
            if f.name != skip:
                os.link(f, folder / f.name)
    # A torch.save zip archive renamed as the weights.
    (w / "pickle" / "model.safetensors").write_bytes(b"PK\x03\x04" + bytes(4096))
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    (w / "mismatch" / "config.json").write_text(json.dumps({**cfg, "dim": cfg["dim"] * 2}))
    return w


@pytest.fixture(scope="module")
def full_run_rchar(world, tiny_checkpoint) -> int:
    """Bytes a successful offline run reads (the weights among them): the yardstick for the refusals."""
    r = tool("moshi-mlx-offline", world / "in.wav", "--model", tiny_checkpoint, "--out", world / "control" / "r.wav",
             "--tail", 0, "--quiet", tmp=world)
    assert r.code == 0, r.stderr
    shutil.rmtree(world / "control")
    return r.rchar


def weight_bytes(folder: Path) -> int:
    return (folder / "model.safetensors").stat().st_size + (folder / MIMI_FILE).stat().st_size


OFFLINE = "moshi-mlx-offline"
CHAT = "moshi-mlx-chat"
# case: (tool, arguments with {w} = the user's folder and {m} = the model folder, words the error must hold)
CASES = {
    "out-is-input": (OFFLINE, ["{w}/in.wav", "--out", "{w}/plain/../in.wav"], ["--out", "in.wav", "input"]),
    "two-outputs-one-file": (OFFLINE, ["{w}/in.wav", "--out", "{w}/x.wav", "--stereo", "{w}/x.wav"], ["--stereo"]),
    "existing-output": (OFFLINE, ["{w}/in.wav", "--out", "{w}/taken.wav"], ["--out", "--force"]),
    "output-is-a-folder": (OFFLINE, ["{w}/in.wav", "--out", "{w}"], ["--out", "folder"]),
    "output-under-a-file": (OFFLINE, ["{w}/in.wav", "--out", "{w}/plain/r.wav"], ["--out", "plain"]),
    "negative-seed": (OFFLINE, ["{w}/in.wav", "--seed", "-5"], ["--seed", "-5"]),
    "huge-seed": (OFFLINE, ["{w}/in.wav", "--seed", str(2**32)], ["--seed"]),
    "nan-tail": (OFFLINE, ["{w}/in.wav", "--tail", "nan"], ["--tail", "nan"]),
    "inf-temp": (OFFLINE, ["{w}/in.wav", "--temp", "inf"], ["--temp", "inf"]),
    "one-hertz-wav": (OFFLINE, ["{w}/one-hertz.wav"], ["one-hertz.wav", "1 Hz"]),
    "no-input": (OFFLINE, [], ["input WAV", "--demo"]),
    "no-tokenizer": (OFFLINE, ["{w}/in.wav", "--model", "{w}/no-tokenizer"], ["no-tokenizer", "tokenizer"]),
    "pickle-named-safetensors": (OFFLINE, ["{w}/in.wav", "--model", "{w}/pickle"], ["model.safetensors", "pickle"]),
    "malformed-repo-id": (OFFLINE, ["{w}/in.wav", "--model", "bad id/with space"], ["bad id/with space",
                                                                                    "not a hub repo id"]),
    "record-is-a-file": (CHAT, ["--record", "{w}/taken.wav"], ["--record", "taken.wav"]),
    "stats-log-missing-folder": (CHAT, ["--stats-log", "{w}/nowhere/s.csv"], ["--stats-log", "nowhere"]),
    "chat-nan-temp": (CHAT, ["--text-temp", "nan"], ["--text-temp"]),
    "chat-no-tokenizer": (CHAT, ["--model", "{w}/no-tokenizer", "--duration", "1"], ["tokenizer"]),
}


@pytest.mark.parametrize("case", CASES)
def test_refused_in_one_line_before_the_weights_are_read(world, tiny_checkpoint, full_run_rchar, case):
    name, args, needles = CASES[case]
    args = [a.format(w=world) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_checkpoint)]
    if name == OFFLINE and "--out" not in args and "--stereo" not in args:
        args += ["--out", str(world / "reply.wav")]
    if case == "chat-no-tokenizer" and not sound_system(world):
        pytest.skip("the chat checks its sound devices before the model: none here")
    before = state(world)
    r = tool(name, *args, tmp=world)
    lines = r.stderr.strip().splitlines()
    assert r.code == 2 and "Traceback" not in r.stderr, r.stderr
    # Progress lines ("loading ...") may come first; the error is one line, the last.
    assert [ln for ln in lines if "error" in ln] == lines[-1:], r.stderr
    assert re.match(r"(moshi-mlx-\w+: )?error: ", lines[-1]), r.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    assert state(world) == before  # the inputs untouched, no output and no .partial left
    # A full run reads the weights; a refusal must have skipped (almost) all of them.
    weights = weight_bytes(tiny_checkpoint)
    assert full_run_rchar > weights
    assert full_run_rchar - r.rchar > 0.8 * weights, (r.rchar, full_run_rchar, weights)


def test_a_config_that_does_not_fit_the_weights_says_which_file(world, tmp_path):
    r = tool(OFFLINE, world / "in.wav", "--model", world / "mismatch", "--out", tmp_path / "r.wav", tmp=world)
    last = r.stderr.strip().splitlines()[-1]
    assert r.code == 2 and "config.json" in last and "config=" not in last and "Traceback" not in r.stderr
    assert not (tmp_path / "r.wav").exists()


def sound_system(world: Path) -> bool:
    """Whether PortAudio lists devices here (listing opens none)."""
    return tool(CHAT, "--list-devices", tmp=world).code == 0


def test_an_unknown_input_device_is_named(world, tiny_checkpoint):
    if not sound_system(world):
        pytest.skip("no sound system here")
    for flag, what in (("--input-device", "microphone"), ("--output-device", "speaker")):
        r = tool(CHAT, "--model", tiny_checkpoint, flag, "999", tmp=world)
        lines = r.stderr.strip().splitlines()
        assert r.code == 3 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"error: {flag} 999: no such {what}"), lines[0]


def test_no_sound_system_is_one_line(world, tmp_path):
    """PortAudio over an ALSA with no cards and no sound server: it cannot even start."""
    stock = Path("/usr/share/alsa/alsa.conf")
    if not stock.exists():
        pytest.skip("no ALSA configuration to strip")
    text = stock.read_text()
    conf = tmp_path / "alsa.conf"  # the stock file without its hooks, which load the sound server's devices
    conf.write_text(re.sub(r"@hooks \[.*?\n\]\n", "", text, count=1, flags=re.S))
    r = tool(CHAT, "--list-devices", tmp=world, env={"ALSA_CONFIG_PATH": str(conf), "PULSE_SERVER": "unix:/none"})
    lines = r.stderr.strip().splitlines()
    assert r.code == 3 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr


def test_list_devices_with_none_says_so(monkeypatch, capsys):
    from app import chat

    class NoDevices:
        @staticmethod
        def query_devices():
            return ()

    monkeypatch.setattr(chat, "import_sounddevice", lambda: NoDevices)
    with pytest.raises(SystemExit) as e:
        chat.run(chat.parse_args(["--list-devices"]))
    err = capsys.readouterr()
    assert e.value.code == 3 and err.out == ""
    assert err.err.strip().startswith("error: no sound devices found") and err.err.count("\n") == 1
