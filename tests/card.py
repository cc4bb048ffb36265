"""The virtual full-duplex sound card (../shared/audio-ci) from tests: inject into the mic, record the bus.

Adapted from the card's guide: the bus monitor is stereo on one clock, left = microphone, right = speaker.
`RoomFeeder` closes the loop through a synthetic room (the card has no acoustic path of its own);
`run_echo_program` is a minimal duplex app to test it with; `follow` maps one timeline onto another.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SR = 24000
CARD = Path(os.environ.get("AUDIO_CI_CARD",
                           Path(__file__).resolve().parents[1].parent / "shared/audio-ci/virtual_soundcard.sh"))


class BusRecorder:
    """with BusRecorder() as rec: ...  then rec.bus[:, 0] = mic, rec.bus[:, 1] = speaker."""

    def __enter__(self):
        self._f = tempfile.NamedTemporaryFile(suffix=".raw", delete=False)
        self._p = subprocess.Popen(["parec", "-d", "bus.monitor", "--raw", "--format=s16le", f"--rate={SR}",
                                    "--channels=2", "--latency-msec=40"], stdout=self._f)
        return self

    def __exit__(self, *exc):
        self._p.send_signal(signal.SIGINT)
        self._p.wait(timeout=5)
        self._f.close()
        raw = np.fromfile(self._f.name, "<i2")
        os.unlink(self._f.name)
        self.bus = raw[: len(raw) // 2 * 2].reshape(-1, 2).astype(np.float32) / 32768.0


def inject(wav_path) -> None:
    """Plays a 24 kHz WAV into the default input; returns when it has played."""
    subprocess.run(["paplay", "-d", "mic_inject", str(wav_path)], check=True)


def lag_and_corr(ref: np.ndarray, sig: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Samples by which sig trails ref, and the normalised correlation there."""
    n = 1 << (len(ref) + len(sig)).bit_length()
    cc = np.fft.irfft(np.fft.rfft(sig, n) * np.conj(np.fft.rfft(ref, n)), n)[: max_lag + 1]
    lag = int(np.argmax(cc))
    seg = sig[lag: lag + len(ref)]
    r = ref[: len(seg)]
    return lag, float(r @ seg / (np.linalg.norm(r) * np.linalg.norm(seg) + 1e-12))


class RoomFeeder:
    """Plays a room into the microphone while a test runs: what the app plays, echoed, plus a user.

    A background thread reads the speaker (`parec -d speaker.monitor`), convolves it with a room response
    (FFT overlap-add, ~2 % of a core), adds the near-end voice and plays the sum into `mic_inject` in
    real time, paced by the card's clock. Everything it played is kept as ground truth:

        with RoomFeeder(room_response(0.05), near, near_start_s=4.0) as room:
            ... run the app, keep its microphone signal `mic` ...
        truth = room.on_app_timeline(mic)   # truth.near, truth.echo: what reached that microphone

    The echo the app hears is delayed by the response's own delay, the card's round trip and this
    feeder: 300-310 ms together, measured; AEC3 finds at most ~500 ms, so keep the response's delay at
    150 ms or less. A playback underrun (a late refill on a busy machine) inserts silence and shifts what
    follows; `on_app_timeline` follows such shifts, `underruns` counts them.

    Args:
        ir: room response at 24 kHz (tests/room.py `room_response`).
        near: the user's voice at 24 kHz, or None for silence.
        near_start_s: when the user's voice starts, from the feeder's start (or call `say` later).
        block: samples per read and write (20 ms: half of parec's 40 ms fragments).
        prefill_s: silence queued for pacat first, as slack for a late refill.
        play_latency_ms: pacat's target buffer. 80 rather than the card's usual 40: measured on a loaded
            2-core machine, the same 300 ms end-to-end delay, and no underrun in 8 runs where 40 ms had
            some in 3 of 8.
    """

    def __init__(self, ir: np.ndarray, near: np.ndarray | None = None, near_start_s: float = 0.0,
                 block: int = 480, prefill_s: float = 0.04, play_latency_ms: int = 80):
        from room import StreamingConvolver

        self.block = block
        self._conv = StreamingConvolver(ir, block)
        voice = np.zeros(0, np.float32) if near is None else np.asarray(near, np.float32)
        self._voice = (int(near_start_s * SR), voice)  # replaced in one assignment: the thread sees both or none
        self._pos = 0
        self._prefill = np.zeros(int(prefill_s * SR), "<i2").tobytes()
        self._parts: dict[str, list[np.ndarray]] = {"far": [], "echo": [], "near": [], "mic": []}
        self.error: BaseException | None = None
        self.underruns = 0
        self.play_latency_ms = play_latency_ms

    def __enter__(self):
        import threading

        fmt = ["--raw", "--format=s16le", f"--rate={SR}", "--channels=1"]
        rt = _realtime_prefix()
        self._rec = subprocess.Popen([*rt, "parec", "-d", "speaker.monitor", *fmt, "--latency-msec=40"],
                                     stdout=subprocess.PIPE)
        self._log = tempfile.TemporaryFile()
        self._play = subprocess.Popen([*rt, "pacat", "-p", "-v", "-d", "mic_inject", *fmt,
                                       f"--latency-msec={self.play_latency_ms}"], stdin=subprocess.PIPE, stderr=self._log)
        self._thread = threading.Thread(target=self._run, args=(bool(rt),), name="room-feeder", daemon=True)
        self._thread.start()
        return self

    def _run(self, realtime: bool) -> None:
        nbytes = 2 * self.block
        try:
            if realtime:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))  # this thread only
            while True:
                raw = self._rec.stdout.read(nbytes)  # blocks until the card has played this much
                if len(raw) < nbytes:
                    return  # parec stopped
                if self._pos == 0:  # only now: pacat would play the slack out while parec starts, then run dry
                    self._play.stdin.write(self._prefill)
                far = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
                echo = self._conv.process(far)
                near = self._near_segment(self._pos, self.block)
                pcm = np.rint(np.clip(echo + near, -1.0, 32767 / 32768) * 32768.0).astype("<i2")
                self._play.stdin.write(pcm.tobytes())
                self._play.stdin.flush()
                for k, v in (("far", far), ("echo", echo), ("near", near), ("mic", pcm / 32768.0)):
                    self._parts[k].append(v.astype(np.float32))
                self._pos += self.block
        except BaseException as e:  # noqa: BLE001 - reported by __exit__
            self.error = e

    def say(self, voice: np.ndarray) -> None:
        """The user starts talking now (from the next block), instead of as planned: e.g. once the app runs."""
        self._voice = (self._pos, np.asarray(voice, np.float32))

    def _near_segment(self, pos: int, n: int) -> np.ndarray:
        start, voice = self._voice
        out = np.zeros(n, np.float32)
        a = pos - start
        lo, hi = max(a, 0), min(a + n, len(voice))
        if hi > lo:
            out[lo - a:hi - a] = voice[lo:hi]
        return out

    def __exit__(self, *exc):
        running_log = os.fstat(self._log.fileno()).st_size  # pacat also reports the underrun at the end
        self._rec.send_signal(signal.SIGINT)
        self._rec.wait(timeout=5)
        self._thread.join(timeout=5)
        try:
            self._play.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._play.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._play.kill()
            self._play.wait()
        for k, v in self._parts.items():
            setattr(self, k, np.concatenate(v) if v else np.zeros(0, np.float32))
        self._log.seek(0)
        self.underruns = self._log.read(running_log).decode(errors="replace").count("underrun")
        self._log.close()
        if self.error is not None and exc[0] is None:
            raise RuntimeError(f"the room feeder failed: {self.error!r}") from self.error

    def on_app_timeline(self, mic: np.ndarray, max_gap_s: float = 0.5) -> Timeline:
        """The ground truth moved onto the timeline of a microphone recording made during the feed.

        Args:
            mic: what the app recorded from the microphone (e.g. the chat's raw-microphone channel).
            max_gap_s: the longest silence an underrun may have inserted.

        Returns:
            A `Timeline`; samples the feeder did not play (before, after, gaps) are 0 in it.
        """
        mic = np.asarray(mic, np.float32)
        n, b = len(mic), self.block
        pos = follow(self.mic, mic, b, max_gap_s)
        t = Timeline(near=np.zeros(n, np.float32), echo=np.zeros(n, np.float32), mic=np.zeros(n, np.float32),
                     mapped=np.zeros(n, bool), positions=pos)
        for k in np.flatnonzero(pos >= 0):
            p = pos[k]
            for name in ("near", "echo", "mic"):
                getattr(t, name)[p:p + b] = getattr(self, name)[k * b:(k + 1) * b]
            t.mapped[p:p + b] = True
        offsets = pos[pos >= 0] - b * np.flatnonzero(pos >= 0)
        t.shifts = int(np.count_nonzero(np.diff(offsets)))
        return t


@dataclass
class Timeline:
    """The feeder's ground truth on an app's timeline (see `RoomFeeder.on_app_timeline`)."""

    near: np.ndarray
    echo: np.ndarray
    mic: np.ndarray  # what the feeder played, where it landed: equals the app's microphone there
    mapped: np.ndarray  # samples the feeder accounts for
    positions: np.ndarray  # where each feeder block starts in the app's signal, -1 if nowhere
    shifts: int = 0  # underrun gaps found while the app recorded


def follow(src: np.ndarray, dst: np.ndarray, block: int, max_gap_s: float = 0.5) -> np.ndarray:
    """Where each block of `src` was copied into `dst` (16-bit exact), allowing gaps of silence in either.

    A playback underrun inserts silence into one of them (into `dst` on the way to the microphone, into
    `src` on the way from the app's speaker), so each block is looked for at the previous block's offset,
    else within `max_gap_s` of it. Blocks too quiet to place (no evidence either way) keep the current
    offset; blocks cut by a gap, or outside `dst`, are not placed.

    Returns:
        int64 [len(src) // block]: start of each block in `dst`, or -1.
    """
    n, b = len(dst), block
    pos = np.full(len(src) // b, -1, dtype=np.int64)
    offset = None
    for k in range(len(pos)):
        blk = src[k * b:(k + 1) * b]
        p = None if offset is None else k * b + offset
        fits = p is not None and 0 <= p and p + b <= n
        if np.abs(blk).max() > 8 / 32768 and not (fits and np.abs(dst[p:p + b] - blk).max() <= 2 / 32768):
            gap = int(max_gap_s * SR)
            lo = 0 if offset is None else max(0, k * b + offset - gap)
            hi = n if offset is None else min(n, k * b + offset + gap + b)
            d = _find_exact(blk, dst[lo:hi]) if hi - lo >= b else None
            if d is None:
                continue  # copied while dst was not recording, or cut by a gap
            offset = lo + d - k * b
            p, fits = lo + d, True
        if fits:
            pos[k] = p
    return pos


def _find_exact(block: np.ndarray, sig: np.ndarray) -> int | None:
    """Where `block` occurs in `sig` sample for sample (to 16-bit rounding), or None.

    Least squares, not the raw correlation peak, which a louder stretch of the same voice can win.
    """
    b = len(block)
    n = 1 << (len(sig) + b).bit_length()
    cc = np.fft.irfft(np.fft.rfft(sig, n) * np.conj(np.fft.rfft(block, n)), n)[: len(sig) - b + 1]
    energy = np.concatenate([[0.0], np.cumsum(np.asarray(sig, np.float64) ** 2)])
    err = energy[b:] - energy[:-b] - 2 * cc + float(block @ block)
    p = int(np.argmin(err))
    return p if np.abs(sig[p:p + b] - block).max() <= 2 / 32768 else None


RT_PRIORITY = 4  # above every normal process, below the card's own sink thread (round-robin 5)


def _realtime_prefix() -> list[str]:
    """`chrt -f` where this process may use real-time scheduling, else nothing.

    The feeder and its pacat must refill a 40 ms buffer on time; on a loaded 2-core machine a normal
    process misses that often enough to cause playback underruns, each of which shifts the rest of the
    timeline. They use ~2 % of a core, so running them at real-time priority costs others nothing.
    """
    try:
        ok = subprocess.run(["chrt", "-f", str(RT_PRIORITY), "true"], capture_output=True).returncode == 0
    except OSError:
        ok = False
    return ["chrt", "-f", str(RT_PRIORITY)] if ok else []


ECHO_PROGRAM = """
import sys
import numpy as np
import sounddevice as sd
far = np.load(sys.argv[1]).astype(np.float32)
rate, block = 24000, 1920
n = (len(far) // block + 13) * block  # ~1 s more than it plays: the last echo comes back
mic, out = np.zeros(n, np.float32), np.zeros(n, np.float32)
far = np.concatenate([far, np.zeros(n - len(far), np.float32)])
state = {"pos": 0, "xruns": 0}
def callback(indata, outdata, frames, time_info, status):
    p = state["pos"]
    state["xruns"] += bool(status)
    if p + frames > n:
        outdata[:] = 0
        raise sd.CallbackStop
    outdata[:, 0] = far[p:p + frames]
    mic[p:p + frames] = indata[:, 0]
    out[p:p + frames] = outdata[:, 0]
    state["pos"] = p + frames
with sd.Stream(samplerate=rate, blocksize=block, channels=1, dtype="float32", callback=callback) as s:
    while s.active:
        sd.sleep(50)
np.savez(sys.argv[2], mic=mic[:state["pos"]], out=out[:state["pos"]], xruns=state["xruns"])
"""


def run_echo_program(far: np.ndarray, folder: Path, timeout_s: float = 60.0) -> dict[str, np.ndarray]:
    """A stand-in app in its own process: one duplex stream that plays `far` and records the microphone.

    Returns:
        {"mic", "out", "xruns"}: float32 arrays on the app's timeline (what each callback read and wrote).
    """
    src, dst = Path(folder) / "far.npy", Path(folder) / "echo_program.npz"
    np.save(src, np.asarray(far, np.float32))
    subprocess.run([sys.executable, "-c", ECHO_PROGRAM, str(src), str(dst)], check=True, timeout=timeout_s)
    with np.load(dst) as z:
        return {k: z[k] for k in z.files}
