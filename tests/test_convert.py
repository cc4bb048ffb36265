"""moshi-mlx-convert: parity with Kyutai's own MLX files, one-line errors, atomic output, streaming memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from convert import ConvertError
from convert.measure import write_random_checkpoint
from convert.pipeline import Options, run
from convert.safetensors_stream import OutputSpec, SequentialWriter, TensorReader, read_header
from moshi_mlx.checkpoint import resolve
from moshi_mlx.constants import LM_FILES, MIMI_FILE, TEXT_TOKENIZER_FILE
from moshi_mlx.lm import Generator, LmConfig, load_lm

ROOT = Path(__file__).resolve().parents[1]
LM_TINY = ROOT / "tests" / "fixtures" / "lm_tiny"
MIMI_TINY = ROOT / "tests" / "fixtures" / "mimi_tiny" / MIMI_FILE
STEPS = 6  # enough steps for every delayed stream to feed real tokens
QUANT = {"q8": (8, 64), "q4": (4, 32)}  # Kyutai's published q8 / q4 settings


def tiny_source(tmp_path: Path, with_extras: bool = True) -> Path:
    """A copy of the tiny PyTorch-layout checkpoint as the hub repo ships it (plus config.json)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(LM_TINY / "model.safetensors", src / "model.safetensors")
    shutil.copyfile(LM_TINY / "config.json", src / "config.json")
    if with_extras:
        shutil.copyfile(MIMI_TINY, src / MIMI_FILE)
        (src / TEXT_TOKENIZER_FILE).write_bytes(b"not a real sentencepiece model")
    return src


def cli(args: list[str], env: dict[str, str] | None = None, patch: str = "") -> subprocess.CompletedProcess:
    """Runs the console entry point in a fresh interpreter (`patch` runs first, e.g. to fake a full disk)."""
    code = f"{patch}\nfrom convert.__main__ import main\nmain()" if patch else None
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "convert"]
    return subprocess.run(cmd + [str(a) for a in args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    # runtime errors say `error: ...`; usage errors argparse's `moshi-mlx-convert: error: ... (see --help)`
    assert len(lines) == 1 and lines[0].startswith(("error: ", "moshi-mlx-convert: error: ")), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_nothing_left(parent: Path, name: str) -> None:
    left = [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f"{name}.")]
    assert not left, left


def assert_same_tensors(ours: Path, reference: Path) -> None:
    a, b = mx.load(str(ours)), mx.load(str(reference))
    assert sorted(a) == sorted(b)
    for k in b:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert mx.array_equal(a[k], b[k]).item(), k


def greedy_logits(model, user_codes: np.ndarray) -> np.ndarray:
    gen = Generator(model, text_temp=0.0, audio_temp=0.0, seed=0)
    out = []
    for t in range(STEPS):
        _, _, (text_logits, audio_logits) = gen.step(user_codes[t][None], return_logits=True)
        out.append(np.concatenate([np.asarray(text_logits).ravel(), np.asarray(audio_logits).ravel()]))
    return np.stack(out)


# ------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("fmt", ["bf16", "q8", "q4"])
def test_pytorch_layout_matches_kyutai_conversion(tmp_path, fmt):
    out = tmp_path / "out"
    quant = None if fmt == "bf16" else fmt
    run(Options(str(tiny_source(tmp_path)), out, quantize=quant))
    weights = out / LM_FILES[fmt]
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", LM_FILES[fmt], MIMI_FILE,
                                                            TEXT_TOKENIZER_FILE])
    # Kyutai's moshi_mlx wrote these from the same PyTorch file: ours must be the same tensors, bit for bit.
    assert_same_tensors(weights, LM_TINY / "mlx" / LM_FILES[fmt])

    cfg = json.loads((out / "config.json").read_text())
    assert LmConfig.from_dict(cfg) == LmConfig.from_json(LM_TINY / "config.json")
    assert (cfg["moshi_name"], cfg["mimi_name"], cfg["tokenizer_name"]) == (LM_FILES[fmt], MIMI_FILE,
                                                                             TEXT_TOKENIZER_FILE)
    if quant:
        bits, group = QUANT[fmt]
        assert cfg["quantization"] == {"bits": bits, "group_size": group}
    else:
        assert "quantization" not in cfg
    model = load_lm(out)  # no flag: config.json beside, quantization detected from the tensors
    assert type(model.text_linear).__name__ == ("Linear" if quant is None else "QuantizedLinear")


def test_bf16_conversion_gives_kyutai_logits(tmp_path):
    with np.load(LM_TINY / "golden.npz") as z:
        user = z["user_codes"]
    out = tmp_path / "out"
    run(Options(str(tiny_source(tmp_path, with_extras=False)), out))
    ours = greedy_logits(load_lm(out, dtype=mx.float32), user)
    kyutai = greedy_logits(load_lm(LM_TINY / "mlx" / "model.safetensors", dtype=mx.float32,
                                   config=LM_TINY / "config.json"), user)
    np.testing.assert_array_equal(ours, kyutai)


def test_mlx_bf16_source_requantizes(tmp_path):
    """Kyutai's MLX bf16 file, or our own bf16 output (config.json and extras beside), re-quantizes."""
    kyutai = tmp_path / "mlx"
    kyutai.mkdir()
    shutil.copyfile(LM_TINY / "mlx" / "model.safetensors", kyutai / "model.safetensors")
    shutil.copyfile(LM_TINY / "config.json", kyutai / "config.json")
    ours = tmp_path / "ours"
    run(Options(str(tiny_source(tmp_path)), ours))
    for src in (kyutai, ours):
        out = tmp_path / f"{src.name}-q4"
        proc = cli([src, "--out", out, "--quantize", "q4"])
        assert proc.returncode == 0, proc.stderr
        assert_same_tensors(out / LM_FILES["q4"], LM_TINY / "mlx" / LM_FILES["q4"])
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["moshi_name"] == LM_FILES["q4"] and cfg["quantization"] == {"bits": 4, "group_size": 32}
    assert (tmp_path / "ours-q4" / MIMI_FILE).is_file()


def test_extras_are_hard_linked_and_fp32_dtype(tmp_path):
    src = tiny_source(tmp_path)
    out = tmp_path / "out"
    run(Options(str(src / "model.safetensors"), out, dtype="fp32", quantize="q8"))
    assert os.stat(out / MIMI_FILE).st_ino == os.stat(src / MIMI_FILE).st_ino
    weights = mx.load(str(out / LM_FILES["q8"]))
    assert weights["text_linear.scales"].dtype == mx.float32 and weights["out_norm.weight"].dtype == mx.float32
    assert load_lm(out).dtype == mx.float32
    files = resolve(out)  # what moshi-mlx-chat --model OUT finds
    assert (files.lm, files.mimi, files.config) == (out / LM_FILES["q8"], out / MIMI_FILE, out / "config.json")


# Nothing listens on the discard port: the hub is unreachable at once, as on a machine without network.
UNREACHABLE_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}


@pytest.mark.parametrize("network", [{"HF_HUB_OFFLINE": "1"}, UNREACHABLE_HUB], ids=["offline", "unreachable"])
def test_offline_hub_cache_source(tmp_path, network):
    """A repo id resolves through huggingface_hub's cache with the network off."""
    repo, commit = "kyutai/moshiko-pytorch-bf16", "0" * 40
    base = tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for name, path in (("model.safetensors", LM_TINY / "model.safetensors"), (MIMI_FILE, MIMI_TINY)):
        shutil.copyfile(path, snap / name)
    env = {"HF_HOME": str(tmp_path / "hf"), **network}
    # No config.json in that repo: the 7B preset does not fit the tiny tensors, --config supplies the config.
    proc = cli([repo, "--out", tmp_path / "out", "--config", LM_TINY / "config.json"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / MIMI_FILE).is_file() and not (tmp_path / "out" / TEXT_TOKENIZER_FILE).exists()
    assert_same_tensors(tmp_path / "out" / "model.safetensors", LM_TINY / "mlx" / "model.safetensors")


# ------------------------------------------------------------------------------------------- errors


def corrupt(tmp_path: Path, how: str) -> Path:
    src = tiny_source(tmp_path, with_extras=False)
    path = src / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    if how == "header_length":
        data = struct.pack("<Q", len(data) * 2) + data[8:]
    elif how == "json":
        data = data[:8] + b"{not json" + data[8 + len(b"{not json"):]
    elif how == "truncated_data":
        data = data[:8 + length + 1000]
    path.write_bytes(data)
    return src


# Stands in for a reachable hub answering 404 (the tests stay offline).
_HUB_404 = """
import types, huggingface_hub as hub
import moshi_mlx.checkpoint
moshi_mlx.checkpoint._hub_reachable = lambda: True
from huggingface_hub.errors import RepositoryNotFoundError
def not_found(*args, **kwargs):
    raise RepositoryNotFoundError("404", response=types.SimpleNamespace(headers={}, request=None))
hub.list_repo_files = hub.hf_hub_download = not_found
"""

ERRORS = {
    "missing_path": (lambda t: [t / "nope" / "model.safetensors"], {}, "", ["no such file or folder"]),
    "offline_not_cached": (lambda t: ["kyutai/moshiko-pytorch-bf16"],
                           {"HF_HUB_OFFLINE": "1", "HF_HOME": "{tmp}/hf"}, "", ["cache", "connect"]),
    "unreachable_not_cached": (lambda t: ["kyutai/moshiko-pytorch-bf16"], {**UNREACHABLE_HUB, "HF_HOME": "{tmp}/hf"},
                               "", ["cache", "connect"]),
    "repo_not_found": (lambda t: ["kyutai/no-such-repo"], {"HF_HUB_OFFLINE": "0"}, _HUB_404,
                       ["no such model repo"]),
    "header_length": (lambda t: [corrupt(t, "header_length")], {}, "", ["corrupt or truncated", "re-download"]),
    "invalid_json": (lambda t: [corrupt(t, "json")], {}, "", ["invalid JSON"]),
    "truncated_data": (lambda t: [corrupt(t, "truncated_data")], {}, "", ["truncated", "re-download"]),
    "pickle_suffix": (lambda t: [_write(t / "model.pt", b"PK\x03\x04rest")], {}, "", ["pickle", ".safetensors"]),
    "pickle_content": (lambda t: [_write(t / "model.safetensors", b"\x80\x02}q\x00.")], {}, "", ["pickle"]),
    "preset_mismatch": (lambda t: [_no_config(t)], {}, "", ["moshi_7b preset", "match no known config"]),
    "config_mismatch": (lambda t: [tiny_source(t), "--config", _config(t, dim=512)], {}, "",
                        ["expects", "match no known config"]),
    "quantized_source": (lambda t: [LM_TINY / "mlx" / "model.q4.safetensors"], {}, "", ["already quantized"]),
    "disk_full": (lambda t: [tiny_source(t)], {},
                  "import shutil, collections\nU = collections.namedtuple('U', 'total used free')\n"
                  "shutil.disk_usage = lambda p: U(10**6, 10**6 - 1000, 1000)", ["not enough disk space"]),
    "group_size_layer": (lambda t: [tiny_source(t), "--quantize", "q4", "--group-size", "128"], {}, "",
                         ["--group-size 128", "depformer.slices.0"]),
    "group_size_unsupported": (lambda t: [tiny_source(t), "--quantize", "q4", "--group-size", "48"], {}, "",
                               ["not supported"]),
    "group_size_without_quantize": (lambda t: [tiny_source(t), "--group-size", "64"], {}, "", ["--quantize"]),
    "bad_quantize_choice": (lambda t: [tiny_source(t), "--quantize", "q3"], {}, "", ["--quantize"]),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _no_config(tmp_path: Path) -> Path:
    src = tiny_source(tmp_path, with_extras=False)
    (src / "config.json").unlink()
    return src


def _config(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "other_config.json"
    path.write_text(json.dumps({**json.loads((LM_TINY / "config.json").read_text()), **changes}))
    return path


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_one_line_and_leave_nothing(tmp_path, case):
    make_args, env, patch, needles = ERRORS[case]
    args = make_args(tmp_path)
    env = {k: v.replace("{tmp}", str(tmp_path)) for k, v in env.items()}
    proc = cli([*args, "--out", tmp_path / "out"], env=env, patch=patch)
    assert_one_line_error(proc, *needles)
    assert_nothing_left(tmp_path, "out")


def test_refuses_overwrite_and_force_replaces(tmp_path):
    src = tiny_source(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert_one_line_error(cli([src, "--out", out]), "already exists", "--force")
    assert (out / "keep.txt").read_text() == "user data"
    proc = cli([src, "--out", out, "--force", "--quantize", "q8"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", LM_FILES["q8"], MIMI_FILE,
                                                            TEXT_TOKENIZER_FILE])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("out.")]  # no partial or old folder


def test_error_midway_removes_partial_folder(tmp_path, monkeypatch):
    calls = []

    def write_then_interrupt(self, name, data):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        original(self, name, data)

    original = SequentialWriter.write
    monkeypatch.setattr(SequentialWriter, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(Options(str(tiny_source(tmp_path)), tmp_path / "deep" / "out"))
    assert not (tmp_path / "deep").exists()  # nor the folder created to hold it


# --------------------------------------------------------------------------------- streaming, memory

MEDIUM = dict(json.loads((LM_TINY / "config.json").read_text()), dim=1024, num_heads=8, num_layers=4,
              text_card=8000, card=1024, depformer_dim=512, depformer_num_heads=8, depformer_dim_feedforward=2048)


@pytest.fixture(scope="module")
def medium_source(tmp_path_factory) -> Path:
    """A ~0.3 GB random PyTorch-layout checkpoint whose largest tensor is ~16 MB."""
    src = tmp_path_factory.mktemp("medium")
    write_random_checkpoint(src / "model.safetensors", LmConfig.from_dict(MEDIUM))
    (src / "config.json").write_text(json.dumps(MEDIUM))
    return src


_MEASURE = """
import json, sys
from convert.measure import peak_rss_bytes
from convert.__main__ import main

def status(field):
    return 1024 * int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])

try:  # Linux: reset the peak to what is resident now, so imports do not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, peak = status("VmRSS:"), lambda: status("VmHWM:")
except OSError:  # elsewhere: the peak so far is the (looser) baseline
    before, peak = peak_rss_bytes(), peak_rss_bytes
main(sys.argv[1:])
print(json.dumps({"before": before, "after": peak()}))
"""


def test_conversion_streams_one_tensor_at_a_time(medium_source, tmp_path):
    size = (medium_source / "model.safetensors").stat().st_size
    largest = max(i.nbytes for i in read_header(medium_source / "model.safetensors").values())
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(medium_source), "--out", str(tmp_path / "q4"),
                           "--quantize", "q4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = rss["after"] - rss["before"]
    # Holding the model would cost the file size; one tensor in flight (plus its converted copies) costs a
    # few times the largest tensor.
    assert growth < min(size / 3, 8 * largest), (growth, size, largest)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_removes_partial_output(medium_source, tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "convert", str(medium_source), "--out", str(out),
                             "--quantize", "q4", "--store-dtype", "fp32"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("out.partial-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "conversion ended before it was interrupted"
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("error: interrupted")
    assert_nothing_left(tmp_path, "out")


def test_writer_holds_nothing_and_reader_slices_rows(tmp_path):
    path = tmp_path / "t.safetensors"
    a = np.arange(24, dtype=np.float32).reshape(6, 4)
    specs = [OutputSpec("a", "F32", (6, 4)), OutputSpec("b", "U32", (2,))]
    writer = SequentialWriter(path, specs, {"format": "mlx"})
    with pytest.raises(ValueError):
        writer.write("b", np.zeros(2, np.uint32))  # out of declared order
    writer.write("a", a)
    writer.write("b", np.array([7, 8], np.uint32))
    writer.close()
    assert writer.largest_write == a.nbytes
    loaded = mx.load(str(path))
    assert np.array_equal(np.array(loaded["a"]), a) and loaded["b"].tolist() == [7, 8]
    header = read_header(path)
    with TensorReader(path) as reader:
        rows = reader.read(header["a"], (2, 4)).view(np.float32).reshape(2, 4)
    assert np.array_equal(rows, a[2:4])
    with pytest.raises(ConvertError):
        read_header(_write(tmp_path / "short.safetensors", b"\x01\x02"))


def test_refuses_an_output_folder_holding_the_source(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    src = tiny_source(out)
    assert_one_line_error(cli([src, "--out", out, "--force"]), "holds the source")
    assert (src / "model.safetensors").is_file()


_KYUTAI_LOAD = """
import json, sys
import mlx.core as mx, mlx.nn as nn
from moshi_mlx import models
for folder in sys.argv[1:]:
    cfg = json.load(open(f"{folder}/config.json"))
    model = models.Lm(models.LmConfig.from_config_dict(cfg))
    model.set_dtype(mx.bfloat16)
    if "quantization" in cfg:
        nn.quantize(model, **cfg["quantization"])
    model.load_weights(f"{folder}/{cfg['moshi_name']}", strict=True)
print("ok")
"""


@pytest.mark.reference
def test_kyutai_moshi_mlx_loads_our_output(tmp_path):
    """Kyutai's own moshi_mlx (the reference venv) loads every output strictly, with our config.json."""
    python = ROOT / ".ref" / "mlx" / "bin" / "python"
    if not python.exists():
        pytest.skip("reference venv .ref/mlx missing: run tests/reference/build_envs.sh")
    src = tiny_source(tmp_path)
    folders = []
    for fmt in ("bf16", "q8", "q4"):
        folders.append(tmp_path / fmt)
        run(Options(str(src), folders[-1], quantize=None if fmt == "bf16" else fmt))
    # From / so that this checkout's moshi_mlx package does not shadow Kyutai's.
    proc = subprocess.run([str(python), "-c", _KYUTAI_LOAD, *map(str, folders)], cwd="/", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_quantized_hub_repo_refused_before_download(tmp_path):
    listing_only = _HUB_404.replace("hub.list_repo_files = hub.hf_hub_download = not_found", (
        "hub.list_repo_files = lambda *a, **k: ['model.q4.safetensors', 'README.md']\n"
        "hub.hf_hub_download = not_found"))
    proc = cli(["kyutai/moshiko-mlx-q4", "--out", tmp_path / "out"], env={"HF_HUB_OFFLINE": "0"},
               patch=listing_only)
    assert_one_line_error(proc, "only quantized weights")


def test_group_size_override(tmp_path):
    out = tmp_path / "out"
    run(Options(str(tiny_source(tmp_path, with_extras=False)), out, quantize="q4", group_size=64))
    assert json.loads((out / "config.json").read_text())["quantization"] == {"bits": 4, "group_size": 64}
    ours = mx.load(str(out / LM_FILES["q4"]))
    kyutai_bf16 = mx.load(str(LM_TINY / "mlx" / "model.safetensors"))
    packed, scales, biases = mx.quantize(kyutai_bf16["text_linear.weight"], group_size=64, bits=4)
    assert mx.array_equal(ours["text_linear.weight"], packed).item()
    assert mx.array_equal(ours["text_linear.scales"], scales).item()
    assert load_lm(out).text_linear.group_size == 64


def test_header_length_starting_with_pickle_byte_is_not_a_pickle(tmp_path):
    """0x80 opens pickle streams, and also any safetensors header whose length is 128 modulo 256."""
    from convert.safetensors_stream import encode_header

    specs = [OutputSpec("w", "F32", (2,))]
    pad = next(n for n in range(256) if encode_header(specs, {"pad": "x" * n})[0] == 0x80)
    path = tmp_path / "model.safetensors"
    writer = SequentialWriter(path, specs, {"pad": "x" * pad})
    writer.write("w", np.ones(2, np.float32))
    writer.close()
    assert path.read_bytes()[0] == 0x80 and read_header(path)["w"].shape == (2,)
