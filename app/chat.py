"""moshi-mlx-chat: talk with Moshi through your microphone and speakers (no headphones needed).

One process, one duplex sound stream whose callback only copies. Moshi's echo is cancelled from the
microphone (WebRTC AEC3; --echo-cancel off to skip it). Mimi encode, the LM step and Mimi decode of
successive frames run pipelined on three threads, so a frame costs the slowest of them. The model is
loaded, compiled and warmed up before the stream opens. Ctrl-C ends the conversation; with --record DIR,
the WAV (mic after echo cancellation, Moshi, raw mic) and the timed transcript are written as the
conversation goes, so a crash loses at most the last two seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from moshi_mlx.constants import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE

from .cli_common import (EXIT_DEVICE, EXIT_FAILURE, add_codec_device_arg, add_model_args, add_sampling_args,
                         bounded_float, bounded_int, build_demo_model, check_codec_device, compile_notice, fail, load_model,
                         make_engine, make_parser, sampling_from_args)
from .memory import rss_mb
from .sound_devices import import_sounddevice, list_devices, parse_device

VOICES = {"moshiko": "kyutai/moshiko-mlx", "moshika": "kyutai/moshika-mlx"}
# q4 (4.8 GB of weights) leaves room below ~24 GB of RAM; q8 (8.2 GB) sounds better where it fits.
Q8_MIN_RAM_GB = 24


def default_model(voice: str) -> str:
    from moshi_mlx.compute_dtype import total_ram_bytes

    bits = "q8" if total_ram_bytes() / 2**30 >= Q8_MIN_RAM_GB else "q4"
    return f"{VOICES[voice]}-{bits}"


def build_parser():
    p = make_parser("moshi-mlx-chat", __doc__)
    add_model_args(p, f"{VOICES['moshiko']}-q8 with {Q8_MIN_RAM_GB} GB of RAM or more, else -q4; see --voice")
    p.add_argument("--voice", choices=sorted(VOICES), default="moshiko",
                   help="which Kyutai model when --model is not given")
    p.add_argument("--demo", action="store_true",
                   help="try the chat without downloading weights: a tiny random model built on the spot "
                   "(it answers with NOISE)")
    p.add_argument("--input-device", default=None, help="microphone: index or name (see --list-devices)")
    p.add_argument("--output-device", default=None, help="speaker: index or name (see --list-devices)")
    p.add_argument("--list-devices", action="store_true", help="list sound devices and exit")
    p.add_argument("--record", type=Path, default=None, metavar="DIR",
                   help="write the conversation into DIR as it goes (created if missing): a WAV with the "
                   "microphone after echo cancellation, Moshi and the raw microphone, and the timed transcript")
    p.add_argument("--echo-cancel", choices=["on", "off"], default="on",
                   help="cancel Moshi's voice from the microphone, so it does not answer itself through "
                   "the speakers (default: on; off with headphones saves ~1 ms per frame)")
    p.add_argument("--engine", choices=["pipelined", "serial"], default="pipelined",
                   help="pipelined: encode, LM and decode of successive frames on three threads (default); "
                   "serial: one thread, a frame costs their sum")
    add_codec_device_arg(p)
    add_sampling_args(p)
    p.add_argument("--max-backlog", type=bounded_int(1, 100), default=3,
                   help="frames of input allowed to wait before old ones are skipped (default: 3)")
    p.add_argument("--silence-timeout", type=bounded_float(0.0, 3600.0), default=6.0,
                   help="stop if the microphone gives exact digital silence this long (default: 6 s)")
    p.add_argument("--duration", type=bounded_float(0.0, 1e7), default=None, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--stats-log", type=Path, default=None, metavar="CSV",
                   help="append session statistics every 10 s to CSV (appends to an existing file): step "
                   "time, latency, echo reduction, backlog, xruns, memory")
    p.add_argument("--quiet", action="store_true", help="no live view: print Moshi's text only")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    if a.demo and a.model is not None:
        p.error("--demo builds its own model; drop --model")
    if a.model is None and not a.demo:
        a.model = default_model(a.voice)
    return a


def query_device(sd, spec: str | None, kind: str):
    """The device info of --input-device / --output-device (None: the default one), or a one-line error
    naming the flag and the device that failed."""
    flag, what = ("--input-device", "microphone") if kind == "input" else ("--output-device", "speaker")
    try:
        return sd.query_devices(parse_device(spec), kind=kind)
    except (ValueError, sd.PortAudioError) as e:
        reason = " ".join(str(e).split())
        if spec is None:
            fail(f"no default {what} ({reason}); plug one in or pick one with {flag} (see --list-devices)",
                 EXIT_DEVICE)
        fail(f"{flag} {spec}: no such {what} ({reason}); see --list-devices", EXIT_DEVICE)


def open_stream_settings(sd, a):
    """Picks the device rate and block: 24 kHz / 1920 where the devices allow, else their native rate."""
    devices = (parse_device(a.input_device), parse_device(a.output_device))
    inp = query_device(sd, a.input_device, "input")
    out = query_device(sd, a.output_device, "output")
    rate = SAMPLE_RATE
    try:
        sd.check_input_settings(devices[0], channels=1, dtype="float32", samplerate=rate)
        sd.check_output_settings(devices[1], channels=1, dtype="float32", samplerate=rate)
    except (ValueError, sd.PortAudioError):
        rate = int(out["default_samplerate"])  # resampled to 24 kHz outside the callback
        try:
            sd.check_input_settings(devices[0], channels=1, dtype="float32", samplerate=rate)
        except (ValueError, sd.PortAudioError) as e:
            fail(f"the microphone and speaker share no sample rate ({e}); choose other devices", EXIT_DEVICE)
    block = rate * FRAME_SIZE // SAMPLE_RATE
    info = f"{inp['name']} -> {out['name']} @ {rate} Hz, block {block}"
    return devices, rate, block, info


def transcript_data(engine, args, sample_rate: int, seconds: float, final: bool = False) -> dict:
    """The timed transcript of the conversation so far (written beside the WAV); `final` closes the last word."""
    words = engine.words(final=final)
    return {"model": str(args.model), "seed": args.seed, "sample_rate": sample_rate,
            "seconds": round(seconds, 3), "frame_rate": FRAME_RATE,
            "text": " ".join(w.text for w in words),
            "words": [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words]}


def run(a: argparse.Namespace) -> int:
    sd = import_sounddevice()
    if a.list_devices:
        list_devices(sd)
        return 0
    record_stem = check_outputs(a)  # fail fast, before the devices open and the model loads
    devices, rate, block, device_info = open_stream_settings(sd, a)
    sampling = sampling_from_args(a)
    check_codec_device(a)
    echo = make_echo_canceller(a, rate, block)
    if a.demo:
        with tempfile.TemporaryDirectory(prefix="moshi-mlx-demo-") as folder:
            a.model = build_demo_model(Path(folder), a.quiet)
            model = load_model(a, quiet=a.quiet)
    else:
        model = load_model(a, quiet=a.quiet)
    engine = make_engine(model, sampling, a)

    from .duplex import DuplexSession

    transcript: list[str] = []

    def on_text(piece: str) -> None:
        transcript.append(piece)
        if a.quiet:
            print(piece, end="", flush=True)

    def step(frame):
        r = engine.step(frame)
        return r.pcm, r.text

    model_io = dict(stream=engine.stream) if a.engine == "pipelined" else dict(step=step)
    session = DuplexSession(**model_io, device_rate=rate, block_size=block, max_backlog_frames=a.max_backlog,
                            record=record_stem is not None, echo=echo, on_text=on_text)
    stop, ready, go = threading.Event(), threading.Event(), threading.Event()

    def inference() -> None:
        """The model's output side runs here, warm-up included (MLX streams belong to a thread); the
        pipelined engine adds its stage threads."""
        import mlx.core as mx

        from moshi_mlx.threads import release_thread_state

        try:
            try:
                mx.set_default_stream(mx.new_stream(mx.default_device()))
                engine.reset()
                engine.warmup(pipelined=a.engine == "pipelined")
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                session.error = e
                stop.set()
                return
            finally:
                ready.set()
            go.wait()
            if not stop.is_set():
                session.run(stop)
        finally:
            release_thread_state()  # MLX's per-thread state must not outlive this thread's Python state

    worker = threading.Thread(target=inference, name="moshi-inference")
    recorder = None
    error: str | None = None
    code = 0
    try:
        compile_notice(a.quiet)
        if not a.quiet:
            print("warming up ...", file=sys.stderr)
        worker.start()
        ready.wait()
        if session.error is None:
            if record_stem is not None:
                recorder = SessionRecording(record_stem, rate, 3 if echo is not None else 2,
                                            lambda seconds: transcript_data(engine, a, rate, seconds))
            try:
                stream = sd.Stream(samplerate=rate, blocksize=block, device=devices, channels=1,
                                   dtype="float32", callback=session.callback)
            except (sd.PortAudioError, ValueError) as e:
                fail(f"cannot open the sound devices ({e}); is another program using them?", EXIT_DEVICE)
            with stream:
                go.set()
                print(f"listening: {device_info}", file=sys.stderr, flush=True)
                error = _ui_loop(a, session, stream, stop, transcript, device_info, recorder)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        go.set()
        worker.join()
        engine.close()  # the pipeline's stage threads
        if recorder is not None:
            session.flush_input()
            recorder.write(session.drain_recording())
            paths = recorder.close(transcript_data(engine, a, rate, recorder.seconds, final=True))
            if not a.quiet:
                print("recorded: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    if a.quiet:
        print()
    session.latency.resolve()
    print(session_summary(session), file=sys.stderr)
    if session.error is not None:
        print(f"error: the model step failed: {type(session.error).__name__}: {session.error}", file=sys.stderr)
        code = EXIT_FAILURE
    elif error is not None:
        print(f"error: {error}", file=sys.stderr)
        code = EXIT_DEVICE
    return code


def session_summary(session) -> str:
    st = session.stats
    lat = session.latency.summary()
    latency = f"latency median {lat[0]:.0f} ms, p90 {lat[1]:.0f} ms" if lat else "latency not measured"
    echo = ""
    if st.echo_cancel:
        echo = (f", echo reduction {st.echo_reduction_db:.1f} dB" if st.echo_reduction_db is not None
                else ", echo cancellation on")
    return (f"{st.frames_in} frames ({st.frames_in / FRAME_RATE:.1f} s), {st.skipped_frames} skipped, "
            f"{st.callbacks} callbacks, {st.xruns} xruns, {st.speaker_underruns} speaker underruns, "
            f"mean step {st.mean_step_ms:.1f} ms, {latency}{echo}")


def check_outputs(a: argparse.Namespace) -> Path | None:
    """Checks --record and --stats-log before the model loads; returns the recording's path stem."""
    from .recording import RecordingError, check_record_dir, session_stem

    stem = None
    if a.record is not None:
        try:
            stem = session_stem(check_record_dir(a.record), datetime.now())
        except RecordingError as e:
            fail(str(e))
    if a.stats_log is not None:
        log = a.stats_log
        if log.is_dir():
            fail(f"--stats-log {log} is a folder; give a CSV file path")
        if not log.parent.is_dir():
            fail(f"--stats-log {log}: the folder {log.parent} does not exist")
        if not os.access(log.parent if not log.exists() else log, os.W_OK):
            fail(f"--stats-log {log}: not writable")
    return stem


def make_echo_canceller(a: argparse.Namespace, rate: int, block: int):
    if a.echo_cancel == "off":
        return None
    from .echo import EchoCanceller, EchoUnavailable

    try:
        return EchoCanceller(rate, block_size=block)
    except EchoUnavailable as e:
        fail(f"{e}; or run with --echo-cancel off and use headphones")


class SessionRecording:
    """The --record files: the WAV written as blocks come (main thread), the transcript every few seconds."""

    def __init__(self, stem: Path, rate: int, channels: int, transcript):
        from .recording import JsonSnapshots, Recorder

        self.wav, self.json = stem.with_suffix(".wav"), stem.with_suffix(".json")
        self.rate = rate
        self.wave = Recorder(self.wav, rate, channels)
        self.snapshots = JsonSnapshots(self.json, lambda: transcript(self.seconds))

    @property
    def seconds(self) -> float:
        return self.wave.seconds

    def write(self, blocks) -> None:
        for b in blocks:
            self.wave.write(b)
        self.snapshots.maybe_write()

    def close(self, final: dict) -> list[Path]:
        from .recording import write_json_atomic

        self.wave.close()
        write_json_atomic(self.json, final)
        return [*self.wave.paths, self.json]


def _ui_loop(a, session, stream, stop: threading.Event, transcript: list[str], device_info: str,
             recorder: SessionRecording | None) -> str | None:
    """Main thread: refresh the view, write the recording, watch for silence, device loss and time limits."""
    silence_frames = int(a.silence_timeout * FRAME_RATE)
    t0 = time.monotonic()
    stats_log = StatsLog(a.stats_log, session, t0) if a.stats_log is not None else None
    live = None
    if not a.quiet:
        from rich.live import Live

        from .view import render

        live = Live(render("", session, None, device_info), refresh_per_second=10, transient=False)
        live.start()
    try:
        while not stop.is_set():
            time.sleep(0.1)
            if recorder is not None:
                recorder.write(session.drain_recording())
            warning = None
            if session.stats.silent_input_frames >= silence_frames > 0:
                return ("the microphone gives only digital silence: on macOS allow your terminal to use it "
                        "(System Settings > Privacy & Security > Microphone), or pick another --input-device")
            if session.stats.silent_input_frames >= FRAME_RATE * 2:
                warning = "the microphone is silent..."
            if not stream.active:
                return "the sound device stopped (unplugged or closed)"
            if a.duration is not None and time.monotonic() - t0 >= a.duration:
                return None
            if live is not None:
                live.update(render("".join(transcript), session, warning, device_info))
            if stats_log is not None:
                stats_log.maybe_write()
        return None
    finally:
        if live is not None:
            live.stop()
        if stats_log is not None:
            stats_log.maybe_write(force=True)


class StatsLog:
    """CSV lines every 10 s, appended: for soak runs and for diagnosing a machine that cannot keep up."""

    PERIOD_S = 10.0
    HEADER = ("elapsed_s,frames,skipped,xruns,speaker_underruns,step_ms_recent,step_ms_mean,pipeline_ms_median,"
              "frames_per_s,latency_ms_median,latency_ms_p90,echo_reduction_db,backlog,rss_mb\n")

    def __init__(self, path: Path, session, t0: float):
        self.path, self.session, self.t0 = path, session, t0
        self.next = t0 + self.PERIOD_S
        if not path.exists() or path.stat().st_size == 0:
            path.write_text(self.HEADER)

    def maybe_write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next:
            return
        self.next = now + self.PERIOD_S
        st = self.session.stats
        recent = list(st.step_ms)[-125:]
        recent_ms = sum(recent) / len(recent) if recent else 0.0
        pipe = sorted(st.pipeline_ms)
        pipe_ms = f"{pipe[len(pipe) // 2]:.1f}" if pipe else ""
        lat = self.session.latency.summary()
        lat_cols = f"{lat[0]:.0f},{lat[1]:.0f}" if lat else ","
        erle = "" if st.echo_reduction_db is None else f"{st.echo_reduction_db:.1f}"
        with self.path.open("a") as f:
            f.write(f"{now - self.t0:.1f},{st.frames_in},{st.skipped_frames},{st.xruns},{st.speaker_underruns},"
                    f"{recent_ms:.2f},{st.mean_step_ms:.2f},{pipe_ms},{st.frames_per_s:.2f},{lat_cols},{erle},"
                    f"{st.backlog_frames},{rss_mb():.1f}\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        code = run(args)
    except KeyboardInterrupt:  # before the conversation started (loading, warm-up): nothing to save
        print("interrupted", file=sys.stderr)
        code = 130
    return code


if __name__ == "__main__":
    sys.exit(main())
