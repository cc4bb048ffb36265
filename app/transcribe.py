"""moshi-mlx-transcribe: speech to text with Kyutai's streaming STT models, from a file or the microphone.

    moshi-mlx-transcribe talk.wav --json talk.json --srt talk.srt
    moshi-mlx-transcribe --mic --json captions.json        # live captions; Ctrl-C ends and writes the files

The words come out a fixed delay behind the audio (0.5 s for kyutai/stt-1b-en_fr, 2.5 s for
kyutai/stt-2.6b-en), each with its start and end time. Models with end-of-turn heads (the -candle repos)
also mark where the speaker seems done.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from .cli_common import (EXIT_DEVICE, EXIT_INTERRUPTED, MAX_SEED, bounded_float, bounded_int, build_demo_model,
                         fail, load_model, make_parser)
from .outputs import OutputPathError, check_output_files, write_text_atomic
from .sound_devices import import_sounddevice, list_devices
from .subtitles import to_srt

DEFAULT_STT_REPO = "kyutai/stt-1b-en_fr-candle"
END_OF_TURN_THRESHOLD = 0.5
"""End-of-turn probability above which a turn is marked (Kyutai's voice agent uses ~0.5-0.6)."""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("moshi-mlx-transcribe", __doc__)
    p.add_argument("input", type=Path, nargs="?", help="WAV file to transcribe (any common rate and channels)")
    p.add_argument("--mic", action="store_true", help="transcribe the microphone live instead of a file")
    p.add_argument("--demo", action="store_true",
                   help="try the program without downloading weights: a tiny random STT model is built on the spot "
                   "(its transcript is gibberish); without INPUT or --mic, a synthetic 2 s input is used")
    p.add_argument("--model", default=DEFAULT_STT_REPO,
                   help="hub repo id or local folder of a Kyutai STT model; the default has the end-of-turn "
                   "heads, kyutai/stt-1b-en_fr-mlx (MLX layout) and kyutai/stt-2.6b-en-mlx have none")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="write text, timed words, every step's token and end-of-turn probability as JSON")
    p.add_argument("--srt", type=Path, default=None, metavar="FILE", help="write the words as SubRip subtitles")
    p.add_argument("--force", action="store_true", help="replace output files that exist (else refused)")
    p.add_argument("--temp", type=bounded_float(0.0, 100.0), default=0.0,
                   help="text sampling temperature; 0 = greedy, as the models are meant to run")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=None,
                   help=f"0..{MAX_SEED}: the sampling seed when --temp > 0")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="LM compute dtype; auto = fp32 on the CPU for bf16 checkpoints that fit in memory "
                   "(MLX's CPU runs fp32 faster), else the checkpoint's")
    mic = p.add_argument_group("microphone (--mic)")
    mic.add_argument("--input-device", default=None, help="microphone index or name (see --list-devices)")
    mic.add_argument("--list-devices", action="store_true", help="list the sound devices and exit")
    mic.add_argument("--record", type=Path, default=None, metavar="DIR",
                     help="also save what the microphone heard, as DIR/transcribe-<date>-<time>.wav")
    p.add_argument("--quiet", action="store_true", help="no progress or live view; the text at the end only")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    if a.list_devices:
        return a
    if a.mic and a.input is not None or not (a.mic or a.input is not None or a.demo):
        p.error("give either an input WAV or --mic (or --demo)")
    if a.demo and a.model != DEFAULT_STT_REPO:
        p.error("--demo builds its own model; drop --model")
    if a.record is not None and not a.mic:
        p.error("--record saves the microphone: use it with --mic")
    if a.input_device is not None and not a.mic:
        p.error("--input-device picks the microphone: use it with --mic")
    return a


def run(a: argparse.Namespace) -> int:
    if a.list_devices:
        list_devices(import_sounddevice())
        return 0
    try:  # before anything slow
        check_output_files({"--json": a.json, "--srt": a.srt}, [a.input] if a.input else [], a.force)
    except OutputPathError as e:
        fail(str(e))
    if a.demo:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="moshi-mlx-demo-") as folder:
            from moshi_mlx.demo_speech import build_stt_checkpoint

            a.model = build_demo_model(Path(folder), a.quiet, build_stt_checkpoint, "STT model",
                                       "its words are GIBBERISH: it shows the program works, not what the real "
                                       "model hears")
            return run_mic(a) if a.mic else run_file(a)
    return run_mic(a) if a.mic else run_file(a)


def run_file(a: argparse.Namespace) -> int:
    from .offline import demo_input, read_input

    pcm = read_input(a.input) if a.input is not None else demo_input()
    if len(pcm) == 0:
        fail(f"{a.input}: the file holds no audio")
    stt = load_transcriber(a)
    start = time.perf_counter()
    transcript = stt.transcribe(pcm) if a.quiet else _transcribe_with_progress(stt, pcm)
    elapsed = time.perf_counter() - start
    write_outputs(a, transcript)
    print(transcript.text)
    if not a.quiet:
        seconds = max(transcript.audio_seconds, 1e-9)
        print(f"{transcript.audio_seconds:.1f} s of audio in {elapsed:.1f} s (real-time factor "
              f"{elapsed / seconds:.2f}, {len(transcript.tokens)} steps)", file=sys.stderr)
    return 0


def load_transcriber(a: argparse.Namespace):
    return load_model(a, a.quiet, kind="stt", use=lambda model: model.transcriber(temp=a.temp, seed=a.seed))


def write_outputs(a: argparse.Namespace, transcript, turn_ends: set[int] = frozenset()) -> None:
    import json

    if a.json is not None:
        write_text_atomic(a.json, json.dumps(transcript.to_dict(), indent=1, ensure_ascii=False) + "\n")
    if a.srt is not None:
        write_text_atomic(a.srt, to_srt(transcript.words, turn_ends))


def _transcribe_with_progress(stt, pcm):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from moshi_mlx.constants import FRAME_RATE

    columns = (BarColumn(bar_width=24), MofNCompleteColumn(), TextColumn("steps, RTF {task.fields[rtf]:.2f}"),
               TimeElapsedColumn(), TextColumn("[bold]{task.fields[text]}"))
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("stt", total=None, rtf=0.0, text="")
        t0 = time.perf_counter()

        def on_step(step: int, total: int) -> None:
            rtf = (time.perf_counter() - t0) * FRAME_RATE / step
            text = " ".join(w.word for w in stt.aligner.current())
            progress.update(task, completed=step, total=total, rtf=rtf, text=text[-48:])

        return stt.transcribe(pcm, on_step=on_step)


# --------------------------------------------------------------------------------------------- live


def run_mic(a: argparse.Namespace) -> int:
    from .mic import Microphone
    from .sound_devices import DeviceError, pick_device

    sd = import_sounddevice()
    try:
        device, rate, name = pick_device(sd, a.input_device, "input")
    except DeviceError as e:
        fail(str(e), EXIT_DEVICE)
    recorder = None
    if a.record is not None:
        from .recording import Recorder, RecordingError, check_record_dir, session_stem

        try:
            folder = check_record_dir(a.record)
            stem = session_stem(folder, datetime.now())
            recorder = Recorder(stem.with_name(stem.name.replace("moshi-", "transcribe-") + ".wav"), rate, 1)
        except RecordingError as e:
            fail(str(e))
    stt = load_transcriber(a)
    stop = threading.Event()
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C ends at once

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    live = LiveCaptions(name, quiet=a.quiet)
    try:
        mic = Microphone(sd, device, rate, on_audio=recorder.write if recorder else None)
    except DeviceError as e:
        fail(str(e), EXIT_DEVICE)
    try:
        with mic, live:
            for frame in mic.frames(stop):
                words, eot = stt.step(frame)
                live.update(stt, words, eot, mic.backlog_seconds)
        transcript = stt.finish()
    finally:
        if recorder is not None:
            recorder.close()
    write_outputs(a, transcript, live.turn_ends)
    print(transcript.text)
    if recorder is not None:
        print(f"recording: {recorder.paths[0]}", file=sys.stderr)
    if mic.dropped:
        print(f"warning: {mic.dropped / rate:.1f} s of audio were lost: the model fell over a minute behind "
              "(try a quantized or a smaller model)", file=sys.stderr)
    return 0


class LiveCaptions:
    """The live view: captions as they form, end-of-turn marks, and how far behind the model is."""

    def __init__(self, device_name: str, quiet: bool):
        self.device_name, self.quiet = device_name, quiet
        self.turn_ends: set[int] = set()  # word indices after which a turn ended
        self._in_turn_end = False
        self._live = None
        self._printed = 0

    def __enter__(self) -> "LiveCaptions":
        if not self.quiet and sys.stdout.isatty():
            from rich.live import Live

            self._live = Live(self._render([], None, 0.0), refresh_per_second=8, transient=False)
            self._live.__enter__()
        elif not self.quiet:
            print(f"listening: {self.device_name}; Ctrl-C ends", file=sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, stt, words, eot: float | None, backlog: float) -> None:
        if eot is not None:
            if eot > END_OF_TURN_THRESHOLD and not self._in_turn_end and words:
                self.turn_ends.add(len(words) - 1)
                self._in_turn_end = True
            elif eot <= END_OF_TURN_THRESHOLD:
                self._in_turn_end = False
        if self._live is not None:
            self._live.update(self._render(words, eot, backlog))
        elif not self.quiet:
            # Not a terminal (a pipe, a log): print each word once it is finished.
            done = stt.aligner.words
            for w in done[self._printed:]:
                print(f"[{w.start:7.2f} -> {w.end:7.2f}] {w.word}", flush=True)
            self._printed = len(done)

    def _render(self, words, eot, backlog):
        from rich.text import Text

        text = Text()
        for i, w in enumerate(words[-60:], start=max(0, len(words) - 60)):
            text.append(w.word + " ")
            if i in self.turn_ends:
                text.append("⏎\n", style="bold green")
        status = f"\n[{self.device_name}] Ctrl-C ends"
        if eot is not None:
            status += f" · end of turn {eot:.2f}"
        if backlog > 0.5:
            status += f" · {backlog:.1f} s behind"
        text.append(status, style="dim")
        return text


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
