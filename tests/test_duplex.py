"""The chat's real-time loop with a fake sound device and a fake clock: no hardware, no real time."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from app.duplex import DuplexSession
from moshi_mlx.audio.ring import SampleRing
from moshi_mlx.constants import FRAME_SIZE, SAMPLE_RATE


class FakeDevice:
    """A duplex stream on a virtual clock: time only passes when the session sleeps or a step 'runs'."""

    def __init__(self, signal: np.ndarray, rate: int = SAMPLE_RATE, block: int = FRAME_SIZE, flags=None,
                 latency: tuple[float, float] | None = None):
        self.signal, self.rate, self.block = signal.astype(np.float32), rate, block
        self.t = 0.0
        self.next_callback = 0.0
        self.pos = 0
        self.played: list[np.ndarray] = []
        self.flags = flags or {}
        self.stop = threading.Event()
        self.session: DuplexSession | None = None
        self.latency = latency  # (input, output) buffering in s: the callback then gets PortAudio-like times

    def advance(self, dt: float) -> None:
        self.t += dt
        while self.t >= self.next_callback and not self.stop.is_set():
            block = self.signal[self.pos:self.pos + self.block]
            if len(block) < self.block:
                self.stop.set()  # the input is over: end the session
                return
            n = len(self.played)
            status = SimpleNamespace(input_overflow=False, input_underflow=False, output_overflow=False,
                                     output_underflow=n in self.flags.get("output_underflow", ()))
            out = np.full((self.block, 1), np.nan, dtype=np.float32)  # NaN: catches unwritten samples
            times = None
            if self.latency is not None:  # the block was captured before its callback and plays after it
                due = self.next_callback
                times = SimpleNamespace(inputBufferAdcTime=due - self.latency[0],
                                        outputBufferDacTime=due + self.latency[1], currentTime=due)
            self.session.callback(block[:, None].copy(), out, self.block, times, status)
            self.played.append(out[:, 0].copy())
            self.pos += self.block
            self.next_callback += self.block / self.rate

    def run(self, session: DuplexSession) -> None:
        self.session = session
        session.clock, session.sleep = (lambda: self.t), self.advance
        session.run(self.stop)


def echo_step(device: FakeDevice, cost: float, gain: float = 0.5):
    def step(frame):
        device.advance(cost)  # the model "takes" this long
        return frame * gain, None
    return step


def tone(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 330 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)


def test_ring_wraps_and_never_overwrites():
    r = SampleRing(10)
    assert r.write(np.arange(7, dtype=np.float32)) == 7
    out = np.zeros(5, np.float32)
    assert r.read_into(out) == 5 and out.tolist() == [0, 1, 2, 3, 4]
    assert r.write(np.arange(100, 110, dtype=np.float32)) == 8  # only 8 fit
    assert r.read(10).tolist() == [5, 6, *range(100, 108)]
    assert r.available() == 0 and r.read_into(out) == 0


def test_fast_model_echoes_every_frame_in_order():
    x = tone(3.0)
    dev = FakeDevice(x)
    session = DuplexSession(echo_step(dev, cost=0.02), record=True)
    dev.run(session)
    played = np.concatenate(dev.played)
    assert not np.isnan(played).any()
    frames = len(dev.played)
    assert session.stats.skipped_frames == 0 and session.stats.mic_dropped == 0
    assert session.stats.frames_in >= frames - 2
    # the reply is the input, halved, one or two blocks later; before it, silence
    lag = next(i for i, b in enumerate(dev.played) if np.abs(b).max() > 0) * FRAME_SIZE
    assert lag in (FRAME_SIZE, 2 * FRAME_SIZE)
    np.testing.assert_allclose(played[lag:], 0.5 * x[:len(played) - lag], atol=1e-6)
    assert session.stats.speaker_underruns == 0


def test_slow_model_keeps_the_backlog_bounded_and_counts_skips():
    x = tone(12.0)
    dev = FakeDevice(x)
    backlogs = []

    def step(frame):
        dev.advance(0.2)  # 2.5x slower than real time
        backlogs.append(session.stats.backlog_frames)
        return frame, None

    session = DuplexSession(step, max_backlog_frames=3)
    dev.run(session)
    assert session.stats.skipped_frames > 0
    assert max(backlogs) <= 3
    assert session.stats.mic_dropped == 0
    # underruns: the speaker got silence (not garbage) when no reply was ready
    assert session.stats.speaker_underruns > 0
    played = np.concatenate(dev.played)
    assert not np.isnan(played).any()
    # frames consumed + skipped account for the input (within the frames still waiting at the end)
    total = len(dev.played)
    assert total - 5 <= session.stats.frames_in + session.stats.skipped_frames <= total


def test_recording_is_complete_after_an_error_mid_session():
    x = tone(4.0)
    dev = FakeDevice(x)
    calls = []

    def step(frame):
        dev.advance(0.01)
        calls.append(1)
        if len(calls) == 20:
            raise RuntimeError("model exploded")
        return frame, None

    session = DuplexSession(step, record=True)
    dev.run(session)
    assert isinstance(session.error, RuntimeError)
    rec = np.concatenate(session.drain_recording())
    n = len(dev.played) * FRAME_SIZE
    assert rec.shape == (n, 2)
    np.testing.assert_array_equal(rec[:, 0], x[:n])  # every microphone sample the device delivered
    np.testing.assert_array_equal(rec[:, 1], np.concatenate(dev.played))  # what the speaker got


def test_status_flags_are_counted():
    dev = FakeDevice(tone(1.0), flags={"output_underflow": (2, 5)})
    session = DuplexSession(echo_step(dev, 0.01))
    dev.run(session)
    assert session.stats.output_underflow == 2 and session.stats.xruns == 2


def test_silent_microphone_is_noticed():
    dev = FakeDevice(np.zeros(3 * SAMPLE_RATE, np.float32))
    session = DuplexSession(echo_step(dev, 0.01))
    dev.run(session)
    assert session.stats.silent_input_frames >= 30


@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_other_device_rates_are_resampled(rate):
    x = tone(3.0, rate)
    block = rate * FRAME_SIZE // SAMPLE_RATE
    dev = FakeDevice(x, rate=rate, block=block)
    got = []

    def step(frame):
        dev.advance(0.01)
        got.append(frame)
        return frame, None

    session = DuplexSession(step, device_rate=rate, block_size=block)
    dev.run(session)
    model_in = np.concatenate(got)
    ref = tone(len(model_in) / SAMPLE_RATE + 0.1)[:len(model_in)]
    # the model sees the 24 kHz version of the input (after the resampler's fixed delay)
    d = session._to_model.delay
    np.testing.assert_allclose(model_in[d + 100:], ref[100:len(model_in) - d], atol=2e-3)
    played = np.concatenate(dev.played)
    assert not np.isnan(played).any() and np.abs(played).max() > 0.3


@pytest.mark.parametrize("rate", [16000, 48000])
def test_slow_model_on_a_resampled_device_loses_nothing_it_keeps(rate):
    """Backlog skipping with resampling: every kept sample reaches the model, none is dropped."""
    x = tone(8.0, rate)
    block = rate * FRAME_SIZE // SAMPLE_RATE
    dev = FakeDevice(x, rate=rate, block=block)
    session = DuplexSession(echo_step(dev, cost=0.25), device_rate=rate, block_size=block, max_backlog_frames=2)
    dev.run(session)
    assert session.stats.skipped_frames > 0 and session.stats.mic_dropped == 0
    assert session.error is None


def test_stream_mode_answers_every_frame_in_order():
    """The model given as a stream (as Engine.stream is): same echo as the per-frame step."""
    x = tone(3.0)
    dev = FakeDevice(x)

    def stream(frames):
        for frame in frames:
            dev.advance(0.02)
            yield SimpleNamespace(pcm=frame * 0.5, text=None, compute_ms=20.0, latency_s=0.02)

    session = DuplexSession(stream=stream, record=True)
    dev.run(session)
    played = np.concatenate(dev.played)
    lag = next(i for i, b in enumerate(dev.played) if np.abs(b).max() > 0) * FRAME_SIZE
    np.testing.assert_allclose(played[lag:], 0.5 * x[:len(played) - lag], atol=1e-6)
    assert session.stats.mean_step_ms == 20.0 and list(session.stats.pipeline_ms)[0] == 20.0
    with pytest.raises(ValueError):
        DuplexSession(echo_step(dev, 0.01), stream=stream)


@pytest.mark.parametrize("device_times", [True, False])
def test_latency_from_microphone_to_speaker(device_times):
    """Each reply is timed from the capture of its frame's last sample to the playing of its first."""
    buffering = (0.03, 0.05)
    dev = FakeDevice(tone(4.0), latency=buffering if device_times else None)
    session = DuplexSession(echo_step(dev, cost=0.01))
    dev.run(session)
    session.latency.resolve()
    median, p90 = session.latency.summary()
    assert session.latency.count >= len(dev.played) - 4
    # A frame's last sample arrives with callback k (its ADC time: the block's start + 80 ms, minus the
    # input buffering); the 10 ms step is done before callback k+1, 80 ms later, which plays the reply
    # after the output buffering. So: the device's buffering only; the sample clock (no device times)
    # sees just the frame and compute, which fit between two callbacks here.
    expected = 1000 * sum(buffering) if device_times else 0.0
    assert expected - 1 <= median <= p90 <= expected + 1, (median, p90, expected)
    assert session.timing.has_device_times == device_times


class SubtractingCanceller:
    """Stands in for AEC3: removes the reference exactly (the test's echo path is the identity)."""

    erle_db = 30.0

    def __init__(self):
        self.calls = 0

    def process(self, near, far):
        self.calls += 1
        return near - 0.8 * far


def test_echo_canceller_sees_every_block_and_the_recording_keeps_three_channels():
    x = tone(6.0)
    dev = FakeDevice(x)
    canceller = SubtractingCanceller()

    def slow(frame):
        dev.advance(0.2)  # slower than real time: frames get skipped
        return frame, None

    session = DuplexSession(slow, echo=canceller, record=True, max_backlog_frames=2)
    dev.run(session)
    session.flush_input()
    rec = np.concatenate(session.drain_recording())
    assert session.stats.skipped_frames > 0
    # every block the device gave went through the canceller, skipped ones included, in order
    assert rec.shape == (len(dev.played) * FRAME_SIZE, 3)
    np.testing.assert_array_equal(rec[:, 2], x[:len(rec)])  # raw microphone
    np.testing.assert_array_equal(rec[:, 1], np.concatenate(dev.played))  # what the speaker got
    np.testing.assert_allclose(rec[:, 0], rec[:, 2] - 0.8 * rec[:, 1], atol=1e-6)  # after cancellation
    assert session.stats.echo_cancel and session.stats.echo_reduction_db == 30.0


def test_slow_model_with_echo_cancellation_keeps_whole_blocks():
    """A step slower than several blocks leaves odd amounts in the rings: the canceller still gets whole
    device blocks (whole 10 ms frames for AEC3), and a dead microphone is noticed under Moshi's voice."""
    from app.echo import EchoCanceller

    dev = FakeDevice(np.zeros(6 * SAMPLE_RATE, np.float32))
    canceller = EchoCanceller(SAMPLE_RATE, block_size=FRAME_SIZE)
    lengths = []
    real = canceller.process

    def process(near, far):
        lengths.append(len(near))
        return real(near, far)

    canceller.process = process

    def slow(frame):
        dev.advance(0.6)
        return 0.3 * np.sin(np.arange(FRAME_SIZE) * 0.05).astype(np.float32), None

    session = DuplexSession(slow, echo=canceller, max_backlog_frames=2)
    dev.run(session)
    assert session.error is None and lengths
    assert all(n % FRAME_SIZE == 0 for n in lengths), lengths
    assert not canceller.switched
    assert session.stats.silent_input_frames >= 30
