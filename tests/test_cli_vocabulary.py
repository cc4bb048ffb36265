"""One vocabulary across the tools (#13): --version and --help everywhere (exit 0), defaults shown, usage
errors in one line, the same flag names (old spellings kept as hidden aliases), and --demo."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli_parser import CliParser, make_parser
from moshi_mlx import __version__

SCRIPTS = Path(sys.executable).parent
# (console script, leading arguments): every tool, and each benchmark of moshi-mlx-bench.
TOOLS = [("moshi-mlx-chat", []), ("moshi-mlx-offline", []), ("moshi-mlx-convert", []),
         ("moshi-mlx-transcribe", []), ("moshi-mlx-speak", []), ("moshi-mlx-bench", []), ("moshi-mlx-bench", ["lm"]),
         ("moshi-mlx-bench", ["mimi"]), ("moshi-mlx-bench", ["offline"]), ("moshi-mlx-bench", ["engine"]),
         ("moshi-mlx-bench", ["stt"]), ("moshi-mlx-bench", ["tts"])]
IDS = [" ".join([t, *a]) for t, a in TOOLS]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    path = SCRIPTS / script
    if not path.exists():
        pytest.skip(f"{path} not installed (pip install -e .)")
    return subprocess.run([str(path), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script,lead", TOOLS, ids=IDS)
def test_version_help_and_usage_errors(script, lead):
    prog = " ".join([script, *lead])
    r = run(script, *lead, "--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"{prog} moshi_mlx {__version__}"), r.stderr
    r = run(script, *lead, "--help")
    assert r.returncode == 0 and "--version" in r.stdout and r.stdout.count("\n") > 5, r.stderr
    r = run(script, *lead, "--no-such-flag")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{prog}: error: ") and lines[0].endswith("(see --help)"), lines[0]


class Captured(Exception):
    def __init__(self, parser, namespace=None):
        self.parser, self.namespace = parser, namespace


def parser_of(main, argv, monkeypatch, parse: bool = False):
    """The parser a tool's main() builds (and what it parsed `argv` into), without running the tool."""
    real = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise Captured(self, real(self, args, namespace) if parse else None)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Captured) as e:
        main(argv)
    return e.value


def mains():
    from app import (bench_engine, bench_lm, bench_mimi, bench_offline, bench_stt, bench_tts, chat, offline, speak,
                     transcribe)
    from convert import __main__ as convert

    return {"chat": chat.main, "offline": offline.main, "convert": convert.main, "bench lm": bench_lm.main,
            "bench mimi": bench_mimi.main, "bench offline": bench_offline.main, "bench engine": bench_engine.main,
            "bench stt": bench_stt.main, "bench tts": bench_tts.main, "transcribe": transcribe.main,
            "speak": speak.main}


@pytest.mark.parametrize("name", ["chat", "offline", "convert", "bench lm", "bench mimi", "bench offline",
                                  "bench engine", "bench stt", "bench tts", "transcribe", "speak"])
def test_every_flag_with_a_default_shows_it(name, monkeypatch):
    p = parser_of(mains()[name], [], monkeypatch).parser
    assert isinstance(p, CliParser)
    formatter = p._get_formatter()
    for action in p._actions:
        if action.option_strings and action.help != argparse.SUPPRESS and action.default not in (
                None, False, argparse.SUPPRESS):
            assert "default" in formatter._get_help_string(action), action.option_strings


def test_the_formatter_adds_defaults_only_where_they_exist():
    p = make_parser("x")
    p.add_argument("--a", type=int, default=3, help="a number")
    p.add_argument("--b", default=None, help="optional")
    p.add_argument("--c", action="store_true", help="a switch")
    p.add_argument("--d", default="q", help="said already (default: q)")
    text = " ".join(p.format_help().split())
    assert "a number (default: 3)" in text and "optional --c" in text and "a switch" in text
    assert text.count("(default: q)") == 1


@pytest.mark.parametrize("name,argv,dest,value", [
    ("convert", ["--model", "some/repo", "--out", "o"], "model", "some/repo"),
    ("convert", ["src", "--out", "o", "--dtype", "fp32"], "store_dtype", "fp32"),  # the old spelling
    ("convert", ["src", "--out", "o", "--store-dtype", "fp32"], "store_dtype", "fp32"),
    ("bench lm", ["--ref-python", "py"], "ref_python", "py"),
    ("bench lm", ["--reference-python", "py"], "ref_python", "py"),
    ("bench offline", ["--ref-python", "py"], "ref_python", "py"),
    ("bench offline", ["--checkpoint", "d"], "checkpoint", Path("d")),
    ("bench engine", ["--model", "d"], "checkpoint", Path("d")),
    ("bench mimi", ["--weights", "w"], "weights", Path("w")),
    ("bench mimi", ["--ref-python", "py"], "reference_python", "py"),
])
def test_one_name_per_flag_old_spellings_still_parse(name, argv, dest, value, monkeypatch):
    c = parser_of(mains()[name], argv, monkeypatch, parse=True)
    assert getattr(c.namespace, dest) == value
    hidden = {"--dtype", "--ref-python", "--checkpoint", "--weights"}
    shown = {o for a in c.parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
    assert not hidden & shown, "an old spelling shows in --help"


def test_convert_takes_the_source_once():
    for args, needle in ((["a", "--model", "b", "--out", "o"], "once"), (["--out", "o"], "SRC is missing")):
        r = run("moshi-mlx-convert", *args)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_demo_runs_without_weights_and_says_it_is_noise(tmp_path):
    r = run("moshi-mlx-offline", "--demo", "--out", str(tmp_path / "r.wav"), "--tail", "0")
    assert r.returncode == 0, r.stderr
    assert "NOISE" in r.stderr and (tmp_path / "r.wav").stat().st_size > 44
    r = run("moshi-mlx-offline", "--demo", "--model", "x", "--out", str(tmp_path / "s.wav"))
    assert r.returncode == 2 and "--demo" in r.stderr and not (tmp_path / "s.wav").exists()


def test_first_run_notice_only_while_no_kernels_are_cached(tmp_path, monkeypatch, capsys):
    import tempfile

    import mlx.core as mx

    from app.cli_common import compile_notice

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    compile_notice(quiet=False)
    assert "compiling kernels (first run only" in capsys.readouterr().err
    cache = tmp_path / "mlx" / mx.__version__ / "cpu"
    cache.mkdir(parents=True)
    (cache / "kernel.so").write_bytes(b"")
    compile_notice(quiet=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("text,ok", [("kyutai/moshiko-mlx-q4", True), ("a_b/c.d-1", True),
                                     ("bad id/with space", False), ("a--b/c", False), ("a/.c", False),
                                     ("a/b-", False), ("a/" + "x" * 97, False)])
def test_hub_ids_are_checked_here_not_blamed_on_the_network(text, ok, monkeypatch):
    from moshi_mlx import checkpoint

    assert checkpoint.is_hub_repo_id(text) is ok
    if not ok:
        def no_network():
            raise AssertionError("a malformed id must not reach the network")

        monkeypatch.setattr(checkpoint, "_hub_reachable", no_network)
        with pytest.raises(checkpoint.CheckpointError, match="not a hub repo id"):
            checkpoint.resolve(text)
