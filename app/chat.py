"""moshi-mlx-chat: talk with Moshi through your microphone and speakers.

One process, one duplex sound stream whose callback only copies, one inference thread. The model is
loaded, compiled and warmed up before the stream opens. Ctrl-C ends the conversation; with --record, a
stereo WAV (microphone left, Moshi right, one timeline) and the timed transcript are written even if
something failed mid-session.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from app.cli_common import add_model_args, add_sampling_args, fail, load_model, sampling_from_args
from moshi_mlx.constants import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE

VOICES = {"moshiko": "kyutai/moshiko-mlx", "moshika": "kyutai/moshika-mlx"}
# q4 (4.8 GB of weights) leaves room below ~24 GB of RAM; q8 (8.2 GB) sounds better where it fits.
Q8_MIN_RAM_GB = 24
EXIT_DEVICE = 3
EXIT_SESSION_ERROR = 1


def total_ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0


def default_model(voice: str) -> str:
    bits = "q8" if total_ram_gb() >= Q8_MIN_RAM_GB else "q4"
    return f"{VOICES[voice]}-{bits}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="moshi-mlx-chat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, None)
    p.add_argument("--voice", choices=sorted(VOICES), default="moshiko",
                   help="which Kyutai model when --model is not given (default: moshiko)")
    p.add_argument("--input-device", default=None, help="microphone: index or name (see --list-devices)")
    p.add_argument("--output-device", default=None, help="speaker: index or name (see --list-devices)")
    p.add_argument("--list-devices", action="store_true", help="list sound devices and exit")
    p.add_argument("--record", type=Path, default=None, metavar="DIR",
                   help="write the conversation (stereo WAV + transcript JSON) into DIR")
    add_sampling_args(p)
    p.add_argument("--max-backlog", type=int, default=3,
                   help="frames of input allowed to wait before old ones are skipped (default: 3)")
    p.add_argument("--silence-timeout", type=float, default=6.0,
                   help="stop if the microphone gives exact digital silence this long (default: 6 s)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--stats-log", type=Path, default=None, metavar="CSV",
                   help="append session statistics (step time, backlog, xruns, memory) every 10 s")
    p.add_argument("--quiet", action="store_true", help="no live view: print Moshi's text only")
    a = p.parse_args(argv)
    if a.model is None:
        a.model = default_model(a.voice)
    return a


def _device(spec: str | None):
    if spec is None:
        return None
    return int(spec) if spec.isdigit() else spec


def import_sounddevice():
    try:
        import sounddevice as sd
    except OSError as e:  # the PortAudio shared library is missing
        fail(f"cannot use audio: {e} (on Linux: `sudo apt-get install libportaudio2`)", EXIT_DEVICE)
    return sd


def open_stream_settings(sd, a):
    """Picks the device rate and block: 24 kHz / 1920 where the devices allow, else their native rate."""
    devices = (_device(a.input_device), _device(a.output_device))
    try:
        inp = sd.query_devices(devices[0], kind="input")
        out = sd.query_devices(devices[1], kind="output")
    except (ValueError, sd.PortAudioError) as e:
        which = "microphone" if "input" in str(e).lower() else "speaker"
        fail(f"no usable {which}: {e}; plug one in or pick one with --input-device/--output-device "
             "(see --list-devices)", EXIT_DEVICE)
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


def write_recording(session, engine, args, started: datetime) -> list[Path]:
    """Stereo WAV + transcript, atomically; called on every exit path."""
    from moshi_mlx.audio import write_wav

    args.record.mkdir(parents=True, exist_ok=True)
    stem = args.record / f"moshi-{started:%Y%m%d-%H%M%S}"
    audio = session.recording()
    wav = stem.with_suffix(".wav")
    write_wav(wav, audio, session.device_rate)
    words = engine.words(final=True)
    data = {"model": str(args.model), "seed": args.seed, "sample_rate": session.device_rate,
            "seconds": round(len(audio) / session.device_rate, 3), "frame_rate": FRAME_RATE,
            "text": " ".join(w.text for w in words),
            "words": [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words]}
    js = stem.with_suffix(".json")
    tmp = js.with_name(js.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, js)
    return [wav, js]


def run(a: argparse.Namespace) -> int:
    sd = import_sounddevice()
    if a.list_devices:
        print(sd.query_devices())
        return 0
    devices, rate, block, device_info = open_stream_settings(sd, a)  # fail fast, before the model loads
    sampling = sampling_from_args(a)
    model = load_model(a, quiet=a.quiet)
    engine = model.engine(sampling)

    from app.duplex import DuplexSession

    transcript: list[str] = []

    def on_text(piece: str) -> None:
        transcript.append(piece)
        if a.quiet:
            print(piece, end="", flush=True)

    def step(frame):
        r = engine.step(frame)
        return r.pcm, r.text

    session = DuplexSession(step, device_rate=rate, block_size=block, max_backlog_frames=a.max_backlog,
                            record=a.record is not None, on_text=on_text)
    stop, ready, go = threading.Event(), threading.Event(), threading.Event()

    def inference() -> None:
        """All model work happens on this thread, warm-up included (MLX streams belong to a thread)."""
        import mlx.core as mx

        try:
            mx.set_default_stream(mx.new_stream(mx.default_device()))
            engine.reset()
            engine.warmup()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            session.error = e
            stop.set()
            return
        finally:
            ready.set()
        go.wait()
        if not stop.is_set():
            session.run(stop)

    worker = threading.Thread(target=inference, name="moshi-inference", daemon=True)
    started = datetime.now()
    error: str | None = None
    code = 0
    try:
        if not a.quiet:
            print("warming up ...", file=sys.stderr)
        worker.start()
        ready.wait()
        if session.error is None:
            try:
                stream = sd.Stream(samplerate=rate, blocksize=block, device=devices, channels=1,
                                   dtype="float32", callback=session.callback)
            except (sd.PortAudioError, ValueError) as e:
                fail(f"cannot open the sound devices ({e}); is another program using them?", EXIT_DEVICE)
            with stream:
                go.set()
                print(f"listening: {device_info}", file=sys.stderr, flush=True)
                error = _ui_loop(a, session, stream, stop, transcript, device_info)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        go.set()
        if worker.is_alive():
            worker.join(timeout=10)
        if a.record is not None:
            paths = write_recording(session, engine, a, started)
            if not a.quiet:
                print("recorded: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    if a.quiet:
        print()
    st = session.stats
    summary = (f"{st.frames_in} frames ({st.frames_in / FRAME_RATE:.1f} s), {st.skipped_frames} skipped, "
               f"{st.callbacks} callbacks, {st.xruns} xruns, {st.speaker_underruns} speaker underruns, "
               f"mean step {st.mean_step_ms:.1f} ms")
    print(summary, file=sys.stderr)
    if session.error is not None:
        print(f"error: the model step failed: {type(session.error).__name__}: {session.error}", file=sys.stderr)
        code = EXIT_SESSION_ERROR
    elif error is not None:
        print(f"error: {error}", file=sys.stderr)
        code = EXIT_DEVICE
    return code


def _ui_loop(a, session, stream, stop: threading.Event, transcript: list[str], device_info: str) -> str | None:
    """Main thread: refresh the view, drain the recording, watch for silence, device loss and time limits."""
    silence_frames = int(a.silence_timeout * FRAME_RATE)
    t0 = time.monotonic()
    stats_log = StatsLog(a.stats_log, session.stats, t0) if a.stats_log is not None else None
    live = None
    if not a.quiet:
        from rich.live import Live

        from app.view import render

        live = Live(render("", session.stats, None, device_info), refresh_per_second=10, transient=False)
        live.start()
    try:
        while not stop.is_set():
            time.sleep(0.1)
            session.drain_recording()
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
                live.update(render("".join(transcript), session.stats, warning, device_info))
            if stats_log is not None:
                stats_log.maybe_write()
        return None
    finally:
        if live is not None:
            live.stop()
        if stats_log is not None:
            stats_log.maybe_write(force=True)


def rss_mb() -> float:
    """Resident memory now (Linux), else the peak so far (macOS reports no current value cheaply)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class StatsLog:
    """CSV lines every 10 s: for soak runs and for diagnosing a machine that cannot keep up."""

    PERIOD_S = 10.0
    HEADER = "elapsed_s,frames,skipped,xruns,speaker_underruns,step_ms_recent,step_ms_mean,backlog,rss_mb\n"

    def __init__(self, path: Path, stats, t0: float):
        self.path, self.stats, self.t0 = path, stats, t0
        self.next = t0 + self.PERIOD_S
        if not path.exists():
            path.write_text(self.HEADER)

    def maybe_write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next:
            return
        self.next = now + self.PERIOD_S
        st = self.stats
        recent = list(st.step_ms)[-125:]
        recent_ms = sum(recent) / len(recent) if recent else 0.0
        with self.path.open("a") as f:
            f.write(f"{now - self.t0:.1f},{st.frames_in},{st.skipped_frames},{st.xruns},{st.speaker_underruns},"
                    f"{recent_ms:.2f},{st.mean_step_ms:.2f},{st.backlog_frames},{rss_mb():.1f}\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        code = run(args)
    except KeyboardInterrupt:  # before the conversation started (loading, warm-up): nothing to save
        print("interrupted", file=sys.stderr)
        code = 130
    if __name__ == "__main__" or sys.argv[0].endswith("moshi-mlx-chat"):
        # Everything is written and the stream is closed. After long sessions, tearing down the native
        # libraries' threads at interpreter exit has aborted the process ("terminate called without an
        # active exception", seen after 1- and 30-minute runs): leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
