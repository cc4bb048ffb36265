"""Text-to-speech: the script rules, the state machine, the speaker's stream, and moshi-mlx-speak (bad
inputs in one line; --play on the virtual sound card). Parity with PyTorch is tests/test_tts_parity.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moshi_mlx.tts import NEW_WORD, PAD, Entry, StateMachine, script_entries

SCRIPT = Path(sys.executable).parent / "moshi-mlx-speak"


class Pieces:
    """A tokenizer stand-in: one token per character, ids 10+."""

    def encode(self, word):
        return [10 + ord(c) % 50 for c in word]


# ------------------------------------------------------------------------------------------- script


def test_script_entries_follow_kyutai_rules():
    e = script_entries(Pieces(), ['Hi (you): it\u2019s <break time="0.4s"/> ok'], multi_speaker=True,
                       padding_between=1)
    assert [x.text for x in e] == ["Hi", "you", "it's", "", "ok"]
    assert e[0].tokens[0] == 1 and len(e[0].tokens) == 3  # the main speaker's token opens the turn
    assert e[1].tokens == Pieces().encode("you") and e[1].padding == 1 + 3 - 1
    assert e[3].tokens == [] and e[3].padding == 5  # 0.4 s at 12.5 Hz
    two = script_entries(Pieces(), ["a", "b"], multi_speaker=True)
    assert two[0].tokens[0] == 1 and two[1].tokens[0] == 2 and two[0].padding == 0
    assert script_entries(Pieces(), ["a b"], multi_speaker=False)[0].tokens == Pieces().encode("a")


# ------------------------------------------------------------------------------------------- machine


def run_machine(machine, entries, sampled):
    state = machine.new_state(entries)
    return [machine.process(step, state, tok) for step, tok in enumerate(sampled)], state


def test_machine_feeds_words_and_pads():
    m = StateMachine(card=100, max_padding=3, initial_padding=2)
    entries = [Entry([11, 12], "ab", padding=1), Entry([], "", padding=2), Entry([13], "c")]
    # The model asks for a word at every step; the machine holds it back while padding is forced.
    out, state = run_machine(m, entries, [NEW_WORD] * 12)
    assert out == [PAD, PAD,            # initial padding is forced
                   NEW_WORD, 11, 12,    # "ab": the marker, then its tokens one per step (its forced
                                        # padding of 1 runs out meanwhile)
                   PAD,                 # the break is consumed as a pad; its padding of 2 starts...
                   PAD,                 # ...and runs out
                   NEW_WORD, 13,        # "c"
                   PAD, PAD, PAD]       # no entry left: the end
    assert state.transcript == [("ab", 2), ("c", 7)] and state.consumption_steps == [2, 5, 7]
    assert state.end_step == 9


def test_machine_forces_a_word_after_max_padding_and_ignores_other_tokens():
    m = StateMachine(card=100, max_padding=3, initial_padding=0)
    out, state = run_machine(m, [Entry([11], "a"), Entry([12], "b")], [PAD, PAD, 57, PAD, PAD, PAD, PAD, PAD])
    # No initial padding: the first word at once; then 3 pads in a row (57 counts as one) force the next.
    assert out == [NEW_WORD, 11, PAD, PAD, NEW_WORD, 12, PAD, PAD]
    assert state.transcript == [("a", 0), ("b", 4)]


def test_second_stream_carries_the_marker_and_the_lookahead():
    card = 100
    m = StateMachine(card=card, second_stream_ahead=2, max_padding=8, initial_padding=0)
    entries = [Entry([11], "a"), Entry([12, 13], "b"), Entry([14], "c")]
    out, state = run_machine(m, entries, [NEW_WORD, PAD, PAD, NEW_WORD, PAD, PAD, PAD])
    main, second = [o % card for o in out], [o // card - 1 for o in out]
    # Step 0: the marker goes on the second stream and "a" starts at once on the main one.
    assert (main[0], second[0]) == (11, NEW_WORD)
    # Then the second stream carries the tokens of the word two entries ahead ("c").
    assert second[1] == 14
    assert (main[3], second[3]) == (12, NEW_WORD) and main[4] == 13


# ------------------------------------------------------------------------------------------- speaker


@pytest.fixture(scope="module")
def tts_checkpoint(tmp_path_factory):
    from moshi_mlx.demo_speech import build_tts_checkpoint as build_tiny_tts_checkpoint

    return build_tiny_tts_checkpoint(tmp_path_factory.mktemp("tts"))


def voice_path(folder: Path) -> Path:
    from moshi_mlx.demo_speech import voice_file_name

    return folder / voice_file_name()


def test_speak_streams_the_synthesized_speech(tts_checkpoint):
    import moshi_mlx

    model = moshi_mlx.load(tts_checkpoint, kind="tts")
    speaker = model.speaker(voice=voice_path(tts_checkpoint), temp=0.0, seed=0)
    frames = list(speaker.speak("hello world. the quick fox"))
    speech = speaker.last
    assert all(f.shape == (1920,) for f in frames)
    np.testing.assert_array_equal(np.concatenate(frames), speech.pcm)
    s = speaker.settings
    assert speech.end_step is not None
    steps = speech.end_step + s.delay_steps + s.final_padding
    assert len(speech.text_tokens) == steps
    assert len(speech.audio_codes) == steps - 2 and len(frames) == steps - 2 - s.delay_steps
    # Audio is the zero token until each codebook's delay has passed the text's 16 steps.
    assert (speech.audio_codes[:s.delay_steps] == -1).all() and (speech.audio_codes[s.delay_steps:] >= 0).all()
    assert [w for w, _, _ in speech.words] == ["hello", "world.", "the", "quick", "fox"]
    starts = [st for _, st, _ in speech.words]
    assert starts == sorted(starts) and speech.words[0][2] == speech.words[1][1]
    again = model.speaker(voice=voice_path(tts_checkpoint), temp=0.0, seed=0).synthesize("hello world. the quick fox")
    assert again.text_tokens == speech.text_tokens


def test_real_cfg_for_a_model_without_the_cfg_condition(tmp_path):
    import moshi_mlx
    from moshi_mlx.loading import LoadError
    from moshi_mlx.demo_speech import build_tts_checkpoint as build_tiny_tts_checkpoint

    folder = build_tiny_tts_checkpoint(tmp_path / "m", distilled=False)
    model = moshi_mlx.load(folder, kind="tts")
    guided = model.speaker(voice=voice_path(folder), cfg=2.0, temp=0.0, seed=0)
    assert guided.real_cfg == 2.0
    plain = model.speaker(voice=voice_path(folder), cfg=1.0, temp=0.0, seed=0)
    a, b = guided.synthesize("hello world"), plain.synthesize("hello world")
    assert a.words and b.words
    assert not np.array_equal(a.audio_codes, b.audio_codes)  # the guidance changes what is sampled


def test_distilled_model_takes_only_its_cfg_values(tts_checkpoint):
    import moshi_mlx
    from moshi_mlx.loading import LoadError

    model = moshi_mlx.load(tts_checkpoint, kind="tts")
    assert model.speaker(voice=voice_path(tts_checkpoint), cfg=3.5).real_cfg is None
    with pytest.raises(LoadError, match="cfg must be one of"):
        model.speaker(voice=voice_path(tts_checkpoint), cfg=2.2)


# ------------------------------------------------------------------------------------------- CLI


def speak(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_refused(p, *needles):
    assert p.returncode != 0, p.stdout + p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert "error: " in last and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in last, last


def test_cli_writes_wav_and_json(tts_checkpoint, tmp_path):
    from moshi_mlx.audio import read_wav

    out, meta = tmp_path / "s.wav", tmp_path / "s.json"
    p = speak("hello world", "--model", tts_checkpoint, "--voice", voice_path(tts_checkpoint), "--out", out,
              "--json", meta, "--temp", "0", "--seed", "3", "--quiet")
    assert p.returncode == 0, p.stderr
    pcm, rate = read_wav(out)
    data = json.loads(meta.read_text())
    (u,) = data["utterances"]
    assert rate == 24000 and len(pcm) == (len(u["audio_codes"]) - 16) * 1920
    assert [w["word"] for w in data["words"]] == ["hello", "world"]
    assert len(u["text_tokens"]) == len(u["audio_codes"]) + 2 and len(u["audio_codes"][0]) == 8


def test_cli_bad_inputs(tts_checkpoint, tiny_checkpoint, tmp_path):
    from moshi_mlx.demo_speech import voice_file_name

    voice = voice_path(tts_checkpoint)
    base = ["--model", tts_checkpoint, "--out", tmp_path / "x.wav"]
    assert_refused(speak("  ", *base, "--voice", voice), "empty")
    assert_refused(speak("hi", *base, "--voice", tmp_path / "nope.safetensors"), "no such voice file")
    other = tmp_path / voice_file_name(model_id={"sig": "othermodel", "epoch": 1}).replace("/", "_")
    shutil.copy(voice, other)
    assert_refused(speak("hi", *base, "--voice", other), "a voice for model othermodel@1")
    import mlx.core as mx

    renamed = tmp_path / "renamed.safetensors"  # the right-looking name, another model's metadata
    mx.save_safetensors(str(renamed), dict(mx.load(str(voice))), metadata={"sig": "othermodel", "epoch": "1"})
    assert_refused(speak("hi", *base, "--voice", renamed), "othermodel@1 (its metadata)")
    assert_refused(speak("hi", "--model", tiny_checkpoint, "--out", tmp_path / "x.wav"),
                   "not a text-to-speech model")
    assert_refused(speak("hi", *base, "--voice", voice, "--cfg", "2.2"), "cfg must be one of")
    assert_refused(speak(*base), "give the text")
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.audio
def test_play_reaches_the_speaker(virtual_card, tts_checkpoint, tmp_path):
    from card import BusRecorder, lag_and_corr
    from moshi_mlx.audio import read_wav

    out = tmp_path / "p.wav"
    with BusRecorder() as bus:
        p = speak("hello world. the quick fox jumps.", "--model", tts_checkpoint, "--voice",
                  voice_path(tts_checkpoint), "--play", "--out", out, "--seed", "2")
    assert p.returncode == 0, p.stderr
    assert "first audio at the speaker after" in p.stderr
    played, _ = read_wav(out)
    speaker_side = bus.bus[:, 1]
    lag, corr = lag_and_corr(played[:24000, 0], speaker_side, max_lag=len(speaker_side) - 24000)
    assert corr > 0.99, (lag, corr)


def test_demo_runs_without_weights(tmp_path):
    from moshi_mlx.audio import read_wav

    p = speak("--demo", "hello world", "--out", tmp_path / "d.wav")
    assert p.returncode == 0, p.stderr
    assert "NOISE" in p.stderr and len(read_wav(tmp_path / "d.wav")[0]) > 0
