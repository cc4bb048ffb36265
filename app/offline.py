"""moshi-mlx-offline: talk to Moshi from a WAV file; get its voice, a stereo mix and a timed transcript.

    moshi-mlx-offline question.wav --out reply.wav --stereo both.wav --transcript words.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from moshi_mlx.audio import AudioFormatError, read_wav, resample, write_wav
from moshi_mlx.constants import FRAME_RATE, SAMPLE_RATE
from moshi_mlx.loading import DEFAULT_REPO

from .cli_common import (add_codec_device_arg, add_model_args, add_sampling_args, bounded_float, build_demo_model,
                         check_codec_device, compile_notice, fail, load_model, make_engine, make_parser,
                         sampling_from_args)
from .outputs import OutputPathError, check_output_files


def build_parser():
    p = make_parser("moshi-mlx-offline", __doc__)
    p.add_argument("input", type=Path, nargs="?",
                   help="WAV file of the user (any common encoding, rate, channels); optional with --demo")
    add_model_args(p, DEFAULT_REPO)
    p.add_argument("--demo", action="store_true",
                   help="try the program without downloading weights: a tiny random model is built on the spot "
                   "(its reply is noise, its words gibberish); without INPUT, a synthetic 2 s input is used")
    p.add_argument("--out", type=Path, default=Path("reply.wav"), metavar="FILE",
                   help="FILE: Moshi's voice, a 24 kHz WAV (its folder is created if missing)")
    p.add_argument("--stereo", type=Path, default=None, metavar="FILE",
                   help="also write a 24 kHz stereo WAV: user (left) + Moshi (right)")
    p.add_argument("--transcript", type=Path, default=None, metavar="FILE",
                   help="also write Moshi's timed words as JSON")
    p.add_argument("--tail", type=bounded_float(0.0, 600.0), default=2.0,
                   help="seconds of silence after the input so Moshi can finish, 0-600")
    p.add_argument("--force", action="store_true", help="replace output files that exist (else refused)")
    add_codec_device_arg(p)
    add_sampling_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    if a.input is None and not a.demo:
        p.error("the input WAV is missing (or pass --demo to try a tiny random model)")
    if a.demo and a.model is not None:
        p.error("--demo builds its own model; drop --model")
    if a.model is None and not a.demo:
        a.model = DEFAULT_REPO
    return a


MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_CHANNELS = 32
MAX_SECONDS = 2 * 3600


def read_input(path: Path) -> np.ndarray:
    """Any WAV -> float32 mono 24 kHz; rates, channel counts and lengths no recording has are refused."""
    try:
        samples, rate = read_wav(path)
    except AudioFormatError as e:
        fail(str(e))
    if not MIN_RATE <= rate <= MAX_RATE:
        fail(f"{path}: the header says {rate} Hz; a recording is {MIN_RATE}-{MAX_RATE} Hz (damaged file?)")
    if samples.shape[1] > MAX_CHANNELS:
        fail(f"{path}: {samples.shape[1]} channels; at most {MAX_CHANNELS} are read")
    if len(samples) > MAX_SECONDS * rate:
        fail(f"{path}: {len(samples) / rate / 3600:.1f} h of audio; split it into parts of at most "
             f"{MAX_SECONDS // 3600} h")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    return resample(mono, rate, SAMPLE_RATE)


def write_transcript(path: Path, result, args) -> None:
    data = {
        "input": str(args.input) if args.input is not None else "(demo input)",
        "model": "(demo: tiny random model)" if args.demo else str(args.model),
        "seed": args.seed,
        "frame_rate": FRAME_RATE,
        "text": " ".join(w.text for w in result.words),
        "words": [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3),
                   "start_frame": w.start_frame, "end_frame": w.end_frame} for w in result.words],
    }
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


DEMO_INPUT_S = 2.0


def demo_input() -> np.ndarray:
    """A 2 s synthetic voice-like tone for --demo without an input file."""
    t = np.arange(int(DEMO_INPUT_S * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


def run(args: argparse.Namespace) -> int:
    try:  # before anything slow: a run of minutes must not end in a traceback or overwrite the input
        check_output_files({"--out": args.out, "--stereo": args.stereo, "--transcript": args.transcript},
                           [args.input] if args.input is not None else [], args.force)
    except OutputPathError as e:
        fail(str(e))
    pcm = read_input(args.input) if args.input is not None else demo_input()  # before loading: fail fast
    sampling = sampling_from_args(args)
    check_codec_device(args)
    if args.demo:
        with tempfile.TemporaryDirectory(prefix="moshi-mlx-demo-") as folder:
            args.model = build_demo_model(Path(folder), args.quiet)
            return _converse(args, pcm, sampling)
    return _converse(args, pcm, sampling)


def _converse(args: argparse.Namespace, pcm: np.ndarray, sampling) -> int:
    model = load_model(args, quiet=args.quiet)
    engine = make_engine(model, sampling, args)
    tail = int(round(args.tail * FRAME_RATE))
    compile_notice(args.quiet)
    start = time.perf_counter()
    if args.quiet:
        result = engine.run_offline(pcm, tail_frames=tail)
    else:
        result = _run_with_progress(engine, pcm, tail)
    elapsed = time.perf_counter() - start
    # Outputs appear only now, each written atomically: an interrupted run leaves none half-done.
    for path in (args.out, args.stereo, args.transcript):
        if path is not None and path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(args.out, result.reply, SAMPLE_RATE)
    if args.stereo is not None:
        write_wav(args.stereo, np.stack([result.user, result.reply], axis=1), SAMPLE_RATE)
    if args.transcript is not None:
        write_transcript(args.transcript, result, args)
    seconds = len(result.user) / SAMPLE_RATE
    if not args.quiet:
        print(f"{seconds:.1f} s of conversation in {elapsed:.1f} s "
              f"(real-time factor {elapsed / seconds:.2f})", file=sys.stderr)
        print(f"Moshi said: {' '.join(w.text for w in result.words) or '(nothing)'}", file=sys.stderr)
    for label, path in (("reply", args.out), ("stereo", args.stereo), ("transcript", args.transcript)):
        if path is not None:
            print(f"{label}: {path}")
    return 0


def _run_with_progress(engine, pcm, tail):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]Moshi"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
               TextColumn("{task.fields[fps]:.1f} frames/s, RTF {task.fields[rtf]:.2f}"), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("run", total=None, fps=0.0, rtf=0.0)
        t0 = time.perf_counter()

        def on_step(t, total, text):
            dt = max(time.perf_counter() - t0, 1e-9)
            fps = (t + 1) / dt
            progress.update(task, completed=t + 1, total=total, fps=fps, rtf=FRAME_RATE / fps)

        return engine.run_offline(pcm, tail_frames=tail, on_step=on_step)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
