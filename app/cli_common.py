"""What every command-line tool shares: the parser (one vocabulary), model and sampling options, and
one-line fatal errors."""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from moshi_mlx.constants import DEFAULT_AUDIO_TEMP, DEFAULT_AUDIO_TOP_K, DEFAULT_TEXT_TEMP, DEFAULT_TEXT_TOP_K

# The parser and the exit codes live in app/cli_parser.py (no package imports, for the benchmarks'
# workers); the tools take them from here.
from .cli_parser import (EXIT_DEVICE, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,  # noqa: F401
                         CliParser, make_parser)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Prints one line to stderr and exits non-zero: the way every user-facing error ends."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def add_model_args(p: argparse.ArgumentParser, default_model: str) -> None:
    """--model (default None: the tool fills in `default_model`, which --help shows), --revision, --dtype."""
    p.add_argument("--model", default=None, metavar="REPO_OR_DIR",
                   help="hub repo id (e.g. kyutai/moshiko-mlx-q4) or a local folder holding the LM weights "
                   "(model[.q4|.q8].safetensors), the Mimi codec file and the text tokenizer (see README) "
                   f"(default: {default_model})")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit (default: the main branch)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                   help="compute dtype of the LM's activations; the weights stay as stored (default: the "
                   "checkpoint's)")


def add_codec_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codec-device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where Mimi runs: auto = the CPU when the LM is on Apple-Silicon's GPU (shared "
                   "memory, the GPU left to the LM), else the LM's device (default: auto)")


def check_codec_device(a: argparse.Namespace) -> None:
    """Refuses a --codec-device this machine lacks, before the model loads."""
    import mlx.core as mx

    from moshi_mlx.engine import pick_codec_device

    try:
        pick_codec_device(a.codec_device, mx.default_device())
    except ValueError as e:
        fail(str(e))


def make_engine(model, sampling, a: argparse.Namespace):
    """The conversation engine with the CLI's codec device (checked by `check_codec_device`)."""
    return model.engine(sampling, codec_device=a.codec_device)


MAX_SEED = 2**32 - 1
MAX_TEMP = 100.0
MAX_TOP_K = 1_000_000


def _bounded(convert, what: str, low, high):
    """argparse type: a finite value of `convert` in [low, high]; anything else is a usage error."""
    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not math.isfinite(v) or not low <= v <= high:
            raise argparse.ArgumentTypeError(f"{text} is not in {low:g}..{high:g}" if convert is float
                                             else f"{text} is not in {low}..{high}")
        return v
    return parse


def bounded_float(low: float, high: float):
    """argparse type: a finite number in [low, high] (nan, inf and out-of-range values are usage errors)."""
    return _bounded(float, "a number", low, high)


def bounded_int(low: int, high: int):
    """argparse type: a whole number in [low, high]."""
    return _bounded(int, "a whole number", low, high)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=None,
                   help=f"0..{MAX_SEED}: makes a run reproducible (default: a random seed)")
    temp = bounded_float(0.0, MAX_TEMP)
    g.add_argument("--temp", type=temp, default=None,
                   help="temperature for both text and audio (0 = greedy); overrides the two below")
    g.add_argument("--text-temp", type=temp, default=DEFAULT_TEXT_TEMP, help="(default: %(default)s)")
    g.add_argument("--audio-temp", type=temp, default=DEFAULT_AUDIO_TEMP, help="(default: %(default)s)")
    top_k = bounded_int(0, MAX_TOP_K)
    g.add_argument("--text-top-k", type=top_k, default=DEFAULT_TEXT_TOP_K, help="0 = no cut (default: %(default)s)")
    g.add_argument("--audio-top-k", type=top_k, default=DEFAULT_AUDIO_TOP_K, help="0 = no cut (default: %(default)s)")


def sampling_from_args(a: argparse.Namespace):
    from moshi_mlx.engine import SamplingParams

    # Values were range-checked when parsed (bounded_float / bounded_int).
    text_temp = a.temp if a.temp is not None else a.text_temp
    audio_temp = a.temp if a.temp is not None else a.audio_temp
    return SamplingParams(text_temp, a.text_top_k, audio_temp, a.audio_top_k, a.seed)


def load_model(a: argparse.Namespace, quiet: bool = False, kind: str | None = None, use=None):
    """moshi_mlx.load with the CLI's options (`--model`, `--revision`, `--dtype`); a failure is one line and
    exit 2.

    The tokenizer is required: without it the model's words would silently be an empty transcript.
    `kind` ("stt", "tts") refuses another kind of model from its config.json before any weight is read;
    `use` turns the loaded model into what the tool runs (a transcriber, a speaker), its refusals reported
    the same way.
    """
    from moshi_mlx.loading import LoadError, load

    if not quiet:
        print(f"loading {a.model} ...", file=sys.stderr)
    try:
        model = load(a.model, revision=a.revision, dtype=a.dtype, kind=kind, need_tokenizer=True)
        return model if use is None else use(model)
    except LoadError as e:
        fail(str(e))


def build_demo_model(folder, quiet: bool, build=None, what: str = "model",
                     caveat: str = "its voice is NOISE and its words gibberish: it shows the program works, not "
                                   "what Moshi sounds like") -> str:
    """--demo: a tiny random checkpoint in `folder` (`build(folder)`, default the Moshi demo), clearly
    labelled; returns the folder as the --model value."""
    import time

    if build is None:
        from moshi_mlx.demo import build_demo_checkpoint as build

    start = time.perf_counter()
    build(folder)
    if not quiet:
        print(f"demo: a tiny random {what} built in {time.perf_counter() - start:.1f} s; {caveat}", file=sys.stderr)
    return str(folder)


# Measured on a 2-core Linux machine: ~15 s more for the first run, the tiny demo model and a 1.3 GB
# model alike (the kernels depend on the operations, not on the sizes).
FIRST_COMPILE_S = 15


def compile_notice(quiet: bool) -> None:
    """Says so before the first warm-up when MLX has not yet compiled its CPU kernels on this machine.

    MLX compiles fused CPU kernels with the system's C++ compiler and keeps them in
    `$TMPDIR/mlx/<version>/cpu`; an empty or missing folder means this run pays for it.
    """
    if quiet:
        return
    import tempfile
    from pathlib import Path

    import mlx.core as mx

    cache = Path(tempfile.gettempdir()) / "mlx" / mx.__version__ / "cpu"
    if cache.is_dir() and any(cache.iterdir()):
        return
    print(f"compiling kernels (first run only, ~{FIRST_COMPILE_S} s on a 2-core CPU) ...", file=sys.stderr)
