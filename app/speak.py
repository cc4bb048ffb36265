"""moshi-mlx-speak: text to speech with Kyutai's streaming TTS; with --play the first words are heard while
the later ones are still being generated.

    moshi-mlx-speak "Hello world. <break time=\\"0.5s\\"/> How are you?" --out hello.wav
    moshi-mlx-speak --text-file story.txt --play --voice expresso/ex03-ex01_happy_001_channel1_334s.wav
    echo "Read from a pipe, line by line." | moshi-mlx-speak - --play

Each line of --text-file or standard input is one utterance, spoken as soon as it is read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .cli_common import (EXIT_DEVICE, EXIT_INTERRUPTED, MAX_SEED, bounded_float, bounded_int, build_demo_model,
                         fail, load_model, make_parser)
from .outputs import OutputPathError, check_output_files, write_text_atomic
from .sound_devices import DeviceError, import_sounddevice, list_devices

DEFAULT_TTS_REPO = "kyutai/tts-1.6b-en_fr"
MAX_TEXT_CHARS = 100_000


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("moshi-mlx-speak", __doc__)
    p.add_argument("text", nargs="?", help="the text to say; - reads standard input (line by line)")
    p.add_argument("--text-file", type=Path, default=None, metavar="FILE", help="read the text from FILE")
    p.add_argument("--model", default=DEFAULT_TTS_REPO, help="hub repo id or local folder of a Kyutai TTS model")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit")
    p.add_argument("--demo", action="store_true",
                   help="try the program without downloading weights: a tiny random TTS model and voice are built on "
                   "the spot (its speech is noise)")
    p.add_argument("--voice", default=None,
                   help="a voice of kyutai/tts-voices (e.g. expresso/ex03-ex01_happy_001_channel1_334s.wav, "
                   "the default) or a local voice .safetensors made for this model")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="FILE: write the speech as a 24 kHz WAV (the default when --play is not given: speech.wav)")
    p.add_argument("--play", action="store_true", help="play the speech as it is generated")
    p.add_argument("--output-device", default=None, help="speaker index or name for --play (see --list-devices)")
    p.add_argument("--list-devices", action="store_true", help="list the sound devices and exit")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="write the timed words, the text token fed at each step and the audio codes as JSON")
    p.add_argument("--force", action="store_true", help="replace output files that exist (else refused)")
    p.add_argument("--cfg", type=bounded_float(1.0, 10.0), default=2.0,
                   help="guidance strength: for Kyutai's CFG-distilled 1.6B one of 1.0-4.0 by 0.5; for other "
                   "models real classifier-free guidance (1.0 = none)")
    p.add_argument("--temp", type=bounded_float(0.0, 100.0), default=0.6, help="sampling temperature (0 = greedy)")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=None,
                   help=f"0..{MAX_SEED}: makes a run reproducible (default: a random seed)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="LM compute dtype; auto = fp32 on the CPU for bf16 checkpoints that fit in memory, else "
                   "the checkpoint's")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    if a.list_devices:
        return a
    if (a.text is None) == (a.text_file is None):
        p.error("give the text, - for standard input, or --text-file FILE (one of them)")
    if a.demo and (a.model != DEFAULT_TTS_REPO or a.voice is not None):
        p.error("--demo builds its own model and voice; drop --model and --voice")
    if a.out is None and not a.play:
        a.out = Path("speech.wav")
    if a.output_device is not None and not a.play:
        p.error("--output-device picks the speaker: use it with --play")
    return a


def read_lines(a: argparse.Namespace):
    """The utterances: the text argument, or the lines of the file / standard input as they come."""
    if a.text_file is not None:
        try:
            text = a.text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            fail(f"--text-file {a.text_file}: cannot read it as UTF-8 text ({e})")
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            fail(f"--text-file {a.text_file}: no text in it")
        return iter(lines)
    if a.text == "-":
        return (line.rstrip("\n") for line in sys.stdin if line.strip())
    if not a.text.strip():
        fail("the text is empty: give something to say")
    return iter([a.text])


def run(a: argparse.Namespace) -> int:
    if a.list_devices:
        list_devices(import_sounddevice())
        return 0
    try:
        check_output_files({"--out": a.out, "--json": a.json}, [a.text_file] if a.text_file else [], a.force)
    except OutputPathError as e:
        fail(str(e))
    lines = read_lines(a) if a.text != "-" else None
    player = None
    if a.play:
        from .player import Player

        try:
            player = Player(import_sounddevice(), a.output_device)
        except DeviceError as e:
            fail(str(e), EXIT_DEVICE)
    if a.demo:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="moshi-mlx-demo-") as folder:
            from moshi_mlx.demo_speech import build_tts_checkpoint, voice_file_name

            a.model = build_demo_model(Path(folder), a.quiet, build_tts_checkpoint, "TTS model",
                                       "its speech is NOISE: it shows the program works, not what the real model "
                                       "sounds like")
            a.voice = str(Path(folder) / voice_file_name())
            return _speak(a, lines, player)
    return _speak(a, lines, player)


def _speak(a: argparse.Namespace, lines, player) -> int:
    speaker = load_speaker(a)
    if lines is None:
        lines = read_lines(a)
    pcm_parts, runs, offset_s = [], [], 0.0
    first_audio, start = None, time.perf_counter()
    try:
        with (player if player is not None else _Nothing()):
            for line in lines:
                if len(line) > MAX_TEXT_CHARS:
                    fail(f"a line of {len(line)} characters; split the text into lines of at most {MAX_TEXT_CHARS}")
                for frame in speaker.speak(line):
                    if first_audio is None:
                        first_audio = time.perf_counter() - start
                    if player is not None:
                        player.write(frame)
                    pcm_parts.append(frame)
                speech = speaker.last
                runs.append((line, speech, offset_s))
                offset_s += len(speech.pcm) / 24_000
                if not a.quiet:
                    print(" ".join(w for w, _, _ in speech.words) or "(no words)", file=sys.stderr)
            elapsed = time.perf_counter() - start  # generation only, not the playing that follows
            if player is not None:
                player.drain(timeout=offset_s + 5.0)
    except KeyboardInterrupt:
        elapsed = time.perf_counter() - start
        print("interrupted: writing what was said so far", file=sys.stderr)
    pcm = np.concatenate(pcm_parts) if pcm_parts else np.zeros(0, dtype=np.float32)
    write_outputs(a, pcm, runs)
    if not a.quiet:
        seconds = len(pcm) / 24_000
        heard = ""
        if player is not None and player.first_sound_at is not None:
            heard = f", first audio at the speaker after {player.first_sound_at - start:.2f} s"
        print(f"{seconds:.1f} s of speech in {elapsed:.1f} s (real-time factor {elapsed / max(seconds, 1e-9):.2f}); "
              f"first frame after {first_audio if first_audio is not None else float('nan'):.2f} s{heard}",
              file=sys.stderr)
        if a.out is not None:
            print(f"speech: {a.out}")
    return 0


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def load_speaker(a: argparse.Namespace):
    return load_model(a, a.quiet, kind="tts",
                      use=lambda model: model.speaker(voice=a.voice, cfg=a.cfg, temp=a.temp, seed=a.seed))


def write_outputs(a: argparse.Namespace, pcm: np.ndarray, runs) -> None:
    from moshi_mlx.audio import write_wav

    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        write_wav(a.out, np.clip(pcm, -1.0, 1.0), 24_000)
    if a.json is not None:
        utterances = []
        for line, speech, offset in runs:
            utterances.append({
                "text": line,
                "offset": round(offset, 4),
                "words": [{"word": w, "start": round(offset + s, 4), "end": round(offset + e, 4)}
                          for w, s, e in speech.words],
                "text_tokens": [int(t) for t in speech.text_tokens],
                "audio_codes": speech.audio_codes.astype(int).tolist(),
                "end_step": speech.end_step,
            })
        data = {"model": str(a.model), "voice": a.voice, "cfg": a.cfg, "temp": a.temp, "seed": a.seed,
                "sample_rate": 24_000, "utterances": utterances,
                "words": [w for u in utterances for w in u["words"]]}
        write_text_atomic(a.json, json.dumps(data, ensure_ascii=False) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
