"""A synthetic room for echo tests: speech-like voices, a room response, and a streaming convolution.

Numpy only, deterministic from a seed. The voices are not speech, but they have what an echo canceller
cares about: harmonic sources with moving pitch, formants that change every syllable, a 4-5 Hz syllable
rhythm and pauses, so a canceller that only gates, or that only cancels stationary tones, is caught.
`echo_scene` builds a far end / near end timeline and `score_echo` grades a canceller on it (or on a
recording from the virtual sound card, whose room feeder lives in `tests/card.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SR = 24000

# (F1, F2, F3) in Hz of an adult male voice (Peterson & Barney's averages); a higher voice scales them.
VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240),
          (660, 1720, 2410), (490, 1350, 1690))
BANDWIDTHS = (70.0, 100.0, 140.0, 200.0)
F4 = 3500.0
VOICES = {"low": (110.0, 1.0), "high": (205.0, 1.17)}  # name -> (mean pitch Hz, formant scale)


def speech_like(seconds: float, sr: int = SR, voice: str = "low", seed: int = 0, pauses: bool = True,
                rms_db: float = -24.0) -> np.ndarray:
    """A voice-like signal: glottal pulses at a moving pitch through moving formants, in syllables.

    Args:
        seconds: length.
        sr: sample rate in Hz.
        voice: "low" (~110 Hz pitch) or "high" (~205 Hz, formants 17 % higher).
        seed: the random syllable, vowel and pitch pattern.
        pauses: talk spurts of 0.8-2.5 s separated by exact silences of 0.3-1.0 s; else one long spurt.
        rms_db: level of the voiced parts, in dB re full scale.

    Returns:
        float32 [round(seconds * sr)] samples.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    f0_mean, scale = VOICES[voice]
    syllables = _syllables(seconds, rng, pauses)  # (start s, duration s, vowel index, pitch factor)
    t = np.arange(n) / sr
    env = np.zeros(n)
    for start, dur, _, _ in syllables:
        a, b = int(start * sr), min(n, int((start + dur) * sr))
        env[a:b] = rng.uniform(0.6, 1.0) * np.sin(np.pi * np.arange(b - a) / max(1, b - a)) ** 0.7
    centres = np.array([s + d / 2 for s, d, _, _ in syllables] or [0.0])
    pitch = np.array([p for *_, p in syllables] or [1.0])
    # Intonation: a pitch target per syllable, vibrato and a little jitter on top.
    f0 = f0_mean * np.interp(t, centres, pitch) * (1 + 0.015 * np.sin(2 * np.pi * 5.3 * t))
    f0 *= 1 + 0.004 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1))
    phase = np.cumsum(f0 / sr) % 1.0
    source = np.diff(_glottal_pulse(phase), prepend=0.0)  # lip radiation ~ a derivative
    source += 0.02 * np.std(source) * rng.standard_normal(n)  # aspiration noise
    formants = np.stack([np.interp(t, centres, [VOWELS[v][i] * scale for _, _, v, _ in syllables] or [500])
                         for i in range(3)], axis=1)
    x = _formant_filter(source, formants, sr) * env
    voiced = env > 0.3
    rms = np.sqrt(np.mean(x[voiced] ** 2)) if voiced.any() else 1.0
    x += rms * _fricatives(syllables, n, sr, rng)
    return (x * (10 ** (rms_db / 20) / rms)).astype(np.float32)


def _fricatives(syllables, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Hiss bursts (~2-9 kHz) at half of the syllable onsets: the energy above 3 kHz that vowels lack."""
    env = np.zeros(n)
    for start, *_ in syllables:
        if rng.random() < 0.5:
            a = int(start * sr)
            b = min(n, a + int(rng.uniform(0.04, 0.09) * sr))
            env[a:b] = rng.uniform(0.3, 0.7) * np.hanning(b - a + 2)[1:-1]
    f = np.fft.rfftfreq(n, 1 / sr)
    band = np.exp(-0.5 * ((f - 5500.0) / 1800.0) ** 2)
    hiss = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * band, n)
    return hiss / (np.std(hiss) + 1e-12) * env


def _syllables(seconds: float, rng: np.random.Generator, pauses: bool) -> list[tuple[float, float, int, float]]:
    out = []
    t = rng.uniform(0.05, 0.3)
    while t < seconds:
        spurt_end = min(seconds, t + (rng.uniform(0.8, 2.5) if pauses else seconds))
        declination = np.linspace(1.12, 0.88, 64)  # pitch falls over a phrase
        start = t
        while t < spurt_end - 0.1:
            dur = min(rng.uniform(0.12, 0.28), spurt_end - t)
            k = int(63 * (t - start) / max(1e-3, spurt_end - start))
            out.append((t, dur, int(rng.integers(len(VOWELS))), declination[k] * rng.uniform(0.92, 1.08)))
            t += dur
        t = spurt_end + (rng.uniform(0.3, 1.0) if pauses else 0.0)
    return out


def _glottal_pulse(p: np.ndarray) -> np.ndarray:
    """Rosenberg's glottal flow over one period: opening 40 %, closing 16 %, closed the rest."""
    g = np.zeros_like(p)
    rise = p < 0.4
    fall = (p >= 0.4) & (p < 0.56)
    g[rise] = 0.5 * (1 - np.cos(np.pi * p[rise] / 0.4))
    g[fall] = np.cos(np.pi * (p[fall] - 0.4) / 0.32)
    return g


def _formant_filter(x: np.ndarray, formants: np.ndarray, sr: int, n_fft: int = 1024) -> np.ndarray:
    """Time-varying cascade of formant resonances, applied frame by frame (sqrt-Hann, 50 % overlap-add)."""
    hop = n_fft // 2
    win = np.sqrt(np.hanning(n_fft + 1)[:-1])
    pad = np.concatenate([np.zeros(hop), x, np.zeros(n_fft)])
    starts = np.arange(0, len(x) + hop, hop)
    frames = np.stack([pad[s:s + n_fft] for s in starts]) * win
    f = np.fft.rfftfreq(n_fft, 1 / sr)
    centre = np.clip(starts, 0, len(x) - 1)
    gain = np.ones((len(starts), len(f)))
    for i, bw in enumerate(BANDWIDTHS):
        fi = formants[centre, i][:, None] if i < 3 else np.full((len(starts), 1), F4)
        h = bw / 2
        gain *= (fi ** 2 + h ** 2) / np.sqrt(((f - fi) ** 2 + h ** 2) * ((f + fi) ** 2 + h ** 2))
    y = np.fft.irfft(np.fft.rfft(frames, axis=1) * gain, n_fft, axis=1) * win
    out = np.zeros(len(pad))
    for k, s in enumerate(starts):
        out[s:s + n_fft] += y[k]
    return out[hop:hop + len(x)]


def room_response(delay_s: float, sr: int = SR, rt60_s: float = 0.2, tail_db: float = -8.0,
                  gain: float = 0.5, seed: int = 0) -> np.ndarray:
    """A loudspeaker-to-microphone impulse response: silence, a direct path, an exponentially decaying tail.

    Args:
        delay_s: time before the direct path arrives (buffering plus flight), in seconds.
        sr: sample rate in Hz.
        rt60_s: time for the tail to decay by 60 dB; the tail ends there.
        tail_db: energy of the tail relative to the direct path.
        gain: amplitude of the direct path (a laptop's speaker heard at its own microphone: ~0.3-1).
        seed: the tail's noise.

    Returns:
        float32 [delay + rt60] taps.
    """
    rng = np.random.default_rng(seed)
    d = int(round(delay_s * sr))
    length = max(2, int(rt60_s * sr))
    gap = int(0.003 * sr)  # first reflections arrive a few ms after the direct sound
    t = np.arange(length - gap) / sr
    tail = rng.standard_normal(len(t)) * 10 ** (-3 * t / rt60_s)
    tail *= np.sqrt(10 ** (tail_db / 10) / np.sum(tail ** 2))
    ir = np.zeros(d + length)
    ir[d] = 1.0
    ir[d + gap:] = tail
    return (gain * ir).astype(np.float32)


def convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """x through ir, same length as x (the tail past the end is dropped); one FFT."""
    n = 1 << (len(x) + len(ir)).bit_length()
    return np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(ir, n), n)[: len(x)].astype(np.float32)


class StreamingConvolver:
    """x through ir block by block, equal to `convolve` on the concatenation (FFT overlap-add).

    Args:
        ir: the impulse response.
        max_block: the longest block `process` will be given.
    """

    def __init__(self, ir: np.ndarray, max_block: int):
        self.n_fft = 1 << (max_block + len(ir)).bit_length()
        self.max_block = max_block
        self._h = np.fft.rfft(np.asarray(ir, dtype=np.float64), self.n_fft)
        self._tail = np.zeros(self.n_fft)

    def process(self, block: np.ndarray) -> np.ndarray:
        n = len(block)
        if n > self.max_block:
            raise ValueError(f"block of {n} samples; this convolver takes at most {self.max_block}")
        y = np.fft.irfft(np.fft.rfft(block, self.n_fft) * self._h, self.n_fft)
        y += self._tail
        out = y[:n].astype(np.float32)
        self._tail[:-n] = y[n:]
        self._tail[-n:] = 0.0
        return out


def frame_power(x: np.ndarray, frame: int) -> np.ndarray:
    """Mean power per whole frame."""
    m = len(x) // frame
    return np.mean(np.asarray(x[: m * frame], dtype=np.float64).reshape(m, frame) ** 2, axis=1)


@dataclass
class EchoScene:
    """One conversation at the microphone: `mic` = `echo` (far through the room) + `near` (the user)."""

    far: np.ndarray
    near: np.ndarray
    echo: np.ndarray
    mic: np.ndarray
    sr: int


def echo_scene(delay_s: float, sr: int = SR, seed: int = 0, gain: float = 0.5, far_db: float = -24.0,
               near_db: float = -24.0) -> EchoScene:
    """13 s: the far end talks alone for 6 s, both talk for 4 s, then the user talks alone for 3 s.

    Both voices have their own pauses, so each phase also holds moments of the other kinds.
    """
    far = np.concatenate([speech_like(10.0, sr, "low", seed=10 + seed, rms_db=far_db), np.zeros(3 * sr)])
    near = np.concatenate([np.zeros(6 * sr), speech_like(7.0, sr, "high", seed=20 + seed, rms_db=near_db)])
    echo = convolve(far, room_response(delay_s, sr, gain=gain, seed=seed))
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    return EchoScene(f32(far), f32(near), echo, f32(echo + near), sr)


@dataclass
class EchoScores:
    """How well `out` removed `echo` from `mic` and kept `near` (all on one timeline)."""

    lag: int  # samples by which the cleaned output trails the microphone
    erle_db: float  # echo-only frames from `settle_s` after the first echo
    near_alone_corr: float  # waveform correlation with the user's voice while no echo arrives
    double_talk_corr: float  # ... while both arrive
    double_talk_level_db: float  # cleaned / true near-end power while both arrive: muting shows here
    frames: dict


def score_echo(near: np.ndarray, echo: np.ndarray, mic: np.ndarray, out: np.ndarray, sr: int,
               settle_s: float = 3.0, max_lag_s: float = 0.05, frame_s: float = 0.02) -> EchoScores:
    """Grades a canceller's output against the ground truth, allowing it a small constant delay.

    Frames (20 ms) are classed from the ground truth: echo only (the user silent: `near` exactly 0),
    user alone (echo 40 dB below the user) and double talk (echo within 10 dB of the user or louder).
    The lag is found where the user talks; a canceller that mutes the microphone while the far end
    plays scores ~0 correlation and a very low level in double talk.
    """
    from card import lag_and_corr

    n = min(len(near), len(echo), len(mic), len(out))
    near, echo, mic, out = (np.asarray(a[:n], dtype=np.float64) for a in (near, echo, mic, out))
    talk = np.flatnonzero(np.abs(near) > 1e-4)
    if len(talk) == 0:
        raise ValueError("the near end never talks: nothing to align on")
    seg = slice(talk[0], n)
    lag, _ = lag_and_corr(near[seg], out[seg], int(max_lag_s * sr))
    out = np.concatenate([out[lag:], np.zeros(lag)])  # aligned with the microphone
    fr = int(frame_s * sr)
    pn, pe, pm, po = (frame_power(a, fr) for a in (near, echo, mic, out))
    start = (np.flatnonzero(np.abs(echo) > 1e-4)[0] / sr if np.any(np.abs(echo) > 1e-4) else 0.0) + settle_s
    t = np.arange(len(pn)) * frame_s
    usable = t < (n - lag) / sr - frame_s  # the zero-filled end of the shifted output says nothing
    # 1e-7 = -70 dBFS: the quietest frame that counts as sound (the voices sit at about -24 dBFS).
    echo_only = usable & (t >= start) & (pn == 0) & (pe > 1e-7)
    alone = usable & (pn > 1e-7) & (pe < 1e-4 * pn)
    double = usable & (pn > 1e-7) & (pe > 0.1 * pn)

    def corr(mask):
        idx = np.repeat(mask, fr)
        a, b = near[: len(idx)][idx], out[: len(idx)][idx]
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        return float(a @ b / denom) if denom > 0 else 0.0, 10 * np.log10((b @ b + 1e-20) / (a @ a + 1e-20))

    erle = 10 * np.log10(pm[echo_only].sum() / max(po[echo_only].sum(), 1e-20)) if echo_only.any() else float("nan")
    dt_corr, dt_level = corr(double)
    return EchoScores(lag=int(lag), erle_db=float(erle), near_alone_corr=corr(alone)[0], double_talk_corr=dt_corr,
                      double_talk_level_db=float(dt_level),
                      frames={"echo_only": int(echo_only.sum()), "near_alone": int(alone.sum()),
                              "double_talk": int(double.sum())})
