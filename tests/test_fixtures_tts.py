"""The TTS oracle itself (tests/fixtures/tts_tiny, written by tests/reference/tts_torch.py + tts_mlx.py) is
coherent: files in the published layouts, shapes that agree, conditions that follow Kyutai's formulas, runs
that follow Kyutai's state machine and delays, and a text stream that exercises both ways a word starts.

Only the fixture is checked here: no moshi_mlx code runs. The state machine and the condition formulas below are
plain restatements of moshi 0.2.13 (tts.py StateMachine.process, conditioners/base.py), the spec the MLX side
implements.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import sentencepiece as spm

from conftest import fixture_dir, load_golden

FRAME = 1920
NEW_WORD, MAIN, PAD, ZERO = 0, 1, 3, -1
DELAY_STEPS = 16  # int(tts_config.audio_delay 1.28 * 12.5)
RUNS = ("distilled", "real_cfg")
# kyutai/tts-1.6b-en_fr config.json: every key, and the values the tiny variant keeps.
PUBLISHED_KEYS = {
    "card", "n_q", "dep_q", "delays", "dim", "text_card", "existing_text_padding_id", "num_heads", "num_layers",
    "hidden_scale", "causal", "layer_scale", "context", "max_period", "gating", "norm", "positional_embedding",
    "depformer_dim", "depformer_num_heads", "depformer_num_layers", "depformer_dim_feedforward",
    "depformer_multi_linear", "depformer_pos_emb", "depformer_weights_per_step", "depformer_low_rank_embeddings",
    "demux_second_stream", "text_card_out", "cross_attention", "conditioners", "fuser", "tts_config", "model_id",
    "depformer_weights_per_step_schedule", "tokenizer_name", "mimi_name", "moshi_name", "model_type",
    "lm_gen_config"}
SCHEDULE = list(range(8)) + [8] * 8 + [9] * 8 + [10] * 8


def _cfg(sub: str = "") -> dict:
    return json.loads((fixture_dir("tts_tiny") / sub / "config.json").read_text())


def _weights(sub: str = "") -> dict[str, np.ndarray]:
    cfg = _cfg(sub)
    w = mx.load(str(fixture_dir("tts_tiny") / sub / cfg["moshi_name"]))
    return {k: np.array(v.astype(mx.float32)) for k, v in w.items()}


def _sin_embedding(positions: int, dim: int, max_period: float = 10000.0) -> np.ndarray:
    """moshi.modules.transformer.create_sin_embedding: [cos | sin], phase = t / max_period^(i / (dim/2 - 1))."""
    half = dim // 2
    phase = np.arange(positions, dtype=np.float64)[:, None] / max_period ** (np.arange(half) / (half - 1))
    return np.concatenate([np.cos(phase), np.sin(phase)], axis=-1)


def test_config_is_the_published_tts_schema():
    cfg, real = _cfg(), _cfg("real_cfg")
    assert set(cfg) == PUBLISHED_KEYS and set(real) == PUBLISHED_KEYS
    assert cfg["model_type"] == "tts" and cfg["n_q"] == cfg["dep_q"] == 32
    assert cfg["delays"] == [0, 0] + [2] * 31
    assert cfg["depformer_weights_per_step_schedule"] == SCHEDULE
    assert cfg["demux_second_stream"] and cfg["cross_attention"] and cfg["depformer_multi_linear"]
    assert cfg["depformer_weights_per_step"] and cfg["depformer_pos_emb"] == "none"
    assert cfg["depformer_low_rank_embeddings"] < cfg["depformer_dim"]
    assert cfg["tts_config"] == {"audio_delay": 1.28, "second_stream_ahead": 2}
    assert int(cfg["tts_config"]["audio_delay"] * 12.5) == DELAY_STEPS
    assert cfg["conditioners"]["speaker_wavs"] == {"type": "tensor", "tensor": {"dim": 512}}
    lut = cfg["conditioners"]["cfg"]["lut"]
    assert lut["possible_values"] == ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"] and lut["n_bins"] == 7
    assert cfg["conditioners"]["control"]["lut"]["possible_values"] == ["ok"]
    assert cfg["fuser"] == {"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1,
                            "sum": ["control", "cfg"], "prepend": [], "cross": ["speaker_wavs"]}
    sig, epoch = cfg["model_id"]["sig"], cfg["model_id"]["epoch"]
    assert cfg["moshi_name"] == f"dsm_tts_{sig}@{epoch}.safetensors"
    # The real-CFG variant: the same but the `cfg` table.
    assert "cfg" not in real["conditioners"] and real["fuser"]["sum"] == ["control"]
    same = {k for k in PUBLISHED_KEYS if k not in ("conditioners", "fuser")}
    assert {k: cfg[k] for k in same} == {k: real[k] for k in same}


def test_files_voice_and_tokenizer():
    d = fixture_dir("tts_tiny")
    cfg = _cfg()
    sig, epoch = cfg["model_id"]["sig"], cfg["model_id"]["epoch"]
    voice_name = f"tiny_voice.wav.{sig}@{epoch}.safetensors"
    for name in (cfg["mimi_name"], "mimi_config.json", cfg["tokenizer_name"], voice_name):
        assert (d / name).read_bytes() == (d / "real_cfg" / name).read_bytes(), name
    # tts_tiny's Mimi is stt_tiny's (mimi_tiny cut to 64-entry codebooks).
    stt = fixture_dir("stt_tiny")
    assert (d / cfg["mimi_name"]).read_bytes() == (stt / "mimi-pytorch-e351c8d8@125.safetensors").read_bytes()
    assert json.loads((d / "mimi_config.json").read_text())["quantizer"]["bins"] == cfg["card"]
    # The voice: kyutai/tts-voices' format, tied to the model by its name's suffix and its metadata.
    voice, meta = mx.load(str(d / voice_name), return_metadata=True)
    assert list(voice) == ["speaker_wavs"] and voice["speaker_wavs"].dtype == mx.float32
    assert voice["speaker_wavs"].shape == (1, 512, 125)
    assert meta == {"sig": sig, "epoch": str(epoch)}
    sp = spm.SentencePieceProcessor(model_file=str(d / cfg["tokenizer_name"]))
    assert sp.get_piece_size() == cfg["text_card"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (NEW_WORD, MAIN, 2, PAD)
    g = load_golden("tts_tiny")
    for word, n in zip(g["entries.text"], g["entries.lengths"]):
        if word:
            assert min(sp.encode(str(word))) > PAD  # no <unk>: 0 would read as the new-word token


def test_pytorch_layout_and_dtypes():
    cfg = _cfg()
    d = fixture_dir("tts_tiny")
    raw = mx.load(str(d / cfg["moshi_name"]))
    dim, ddim, rank, card, tcard = (cfg[k] for k in ("dim", "depformer_dim", "depformer_low_rank_embeddings",
                                                      "card", "text_card"))
    sets = max(SCHEDULE) + 1
    hidden, dhidden = 2 * int(cfg["hidden_scale"] * dim) // 3, 2 * cfg["depformer_dim_feedforward"] // 3
    expected = {
        "text_emb.weight": (tcard + 1, dim), "text_emb.out1.weight": (dim, dim), "text_emb.out2.weight": (dim, dim),
        "text_linear.weight": (tcard, dim), "out_norm.alpha": (1, 1, dim),
        "depformer_text_emb.weight": (tcard + 1, rank), "depformer_text_emb.low_rank.weight": (ddim, rank),
        "depformer_text_emb.out1.weight": (ddim, rank), "depformer_text_emb.out2.weight": (ddim, rank),
        "condition_provider.conditioners.speaker_wavs.output_proj.weight": (dim, 512),
        "condition_provider.conditioners.speaker_wavs.learnt_padding": (1, 1, dim),
    }
    for name in ("cfg", "control"):
        lut = cfg["conditioners"][name]["lut"]
        expected[f"condition_provider.conditioners.{name}.embed.weight"] = (lut["n_bins"] + 1, lut["dim"])
        expected[f"condition_provider.conditioners.{name}.output_proj.weight"] = (dim, lut["dim"])
        expected[f"condition_provider.conditioners.{name}.learnt_padding"] = (1, 1, dim)
    for k in range(cfg["n_q"]):
        expected[f"emb.{k}.weight"] = (card + 1, dim)
        expected[f"linears.{k}.weight"] = (card, ddim)
    for k in range(cfg["dep_q"] - 1):
        expected[f"depformer_emb.{k}.weight"] = (card + 1, rank)
        expected[f"depformer_emb.{k}.low_rank.weight"] = (ddim, rank)
    for j in range(sets):
        expected[f"depformer_in.{j}.weight"] = (ddim, dim)
    for i in range(cfg["num_layers"]):
        p = f"transformer.layers.{i}."
        expected |= {p + "self_attn.in_proj_weight": (3 * dim, dim), p + "self_attn.out_proj.weight": (dim, dim),
                     p + "cross_attention.in_proj_weight": (3 * dim, dim),
                     p + "cross_attention.out_proj.weight": (dim, dim), p + "norm_cross.weight": (dim,),
                     p + "norm_cross.bias": (dim,), p + "norm1.alpha": (1, 1, dim), p + "norm2.alpha": (1, 1, dim),
                     p + "gating.linear_in.weight": (2 * hidden, dim), p + "gating.linear_out.weight": (dim, hidden)}
    for i in range(cfg["depformer_num_layers"]):
        p = f"depformer.layers.{i}."
        expected |= {p + "self_attn.in_proj_weight": (sets * 3 * ddim, ddim),
                     p + "self_attn.out_proj.weight": (sets * ddim, ddim),
                     p + "norm1.alpha": (1, 1, ddim), p + "norm2.alpha": (1, 1, ddim)}
        for j in range(sets):
            expected |= {p + f"gating.{j}.linear_in.weight": (2 * dhidden, ddim),
                         p + f"gating.{j}.linear_out.weight": (ddim, dhidden)}
    assert {k: tuple(v.shape) for k, v in raw.items()} == expected
    for k, v in raw.items():
        assert v.dtype == (mx.float32 if k.startswith("condition_provider.") else mx.bfloat16), k
    # real_cfg/: the same tensors, less the `cfg` table.
    real = mx.load(str(d / "real_cfg" / cfg["moshi_name"]))
    assert set(raw) - set(real) == {k for k in raw if k.startswith("condition_provider.conditioners.cfg.")}
    assert all(mx.array_equal(real[k], raw[k]).item() for k in real)


def test_conditions_follow_kyutais_formulas():
    """Summed conditions: each LUT's output_proj(embed[index]), learnt padding for a null value; the
    cross-attention source: the voice [1, 512, 125] transposed into slot 0 of 5, output_proj, learnt padding in
    the empty slots, plus the sinusoidal embedding of positions 0-624 (scale 1)."""
    g, w, cfg = load_golden("tts_tiny"), _weights(), _cfg()
    d = fixture_dir("tts_tiny")
    sig, epoch = cfg["model_id"]["sig"], cfg["model_id"]["epoch"]
    voice = np.array(mx.load(str(d / f"tiny_voice.wav.{sig}@{epoch}.safetensors"))["speaker_wavs"])
    c = "condition_provider.conditioners."

    def lut(name: str, value: str | None) -> np.ndarray:
        if value is None:
            return w[f"{c}{name}.learnt_padding"][0, 0]
        index = cfg["conditioners"][name]["lut"]["possible_values"].index(value)
        return w[f"{c}{name}.output_proj.weight"] @ w[f"{c}{name}.embed.weight"][index]

    np.testing.assert_allclose(g["distilled.cond_sum"][0, 0], lut("control", "ok") + lut("cfg", "2.0"),
                               atol=1e-5)
    real_sum = g["real_cfg.cond_sum"][:, 0]
    np.testing.assert_allclose(real_sum[0], lut("control", "ok"), atol=1e-5)
    np.testing.assert_allclose(real_sum[1], lut("control", None), atol=1e-6)  # the null half
    cross = g["distilled.cond_cross"][0]
    frames = voice.shape[-1]
    assert cross.shape == (5 * frames, cfg["dim"])
    src = np.tile(w[f"{c}speaker_wavs.learnt_padding"][0], (5 * frames, 1))
    src[:frames] = voice[0].T @ w[f"{c}speaker_wavs.output_proj.weight"].T
    np.testing.assert_allclose(cross, src + _sin_embedding(5 * frames, cfg["dim"]), atol=1e-4)


def _replay(entries: list[tuple[list[int], int]], sampled: np.ndarray, card: int, max_padding: int = 8,
            initial_padding: int = 2, lookahead: int = 2) -> tuple[list[int], list[int], int | None]:
    """moshi 0.2.13 StateMachine.process (tts.py 159-251) over a run's sampled text tokens, with
    TTSModel.from_checkpoint_info's max_padding 8 / initial_padding 2 and second_stream_ahead 2.
    entries: (tokens, padding). Returns (fed tokens, consumption steps, end step)."""
    queue = list(entries)
    queued, ahead, fed, consumed = [], [], [], []
    remaining = forced = initial_padding
    end = None
    for step, token in enumerate(int(t) for t in sampled):
        if token not in (NEW_WORD, PAD):
            token = PAD
        if queued or forced > 0:
            token = PAD
        elif remaining <= 0:
            token = NEW_WORD
        if token == NEW_WORD:
            if queue:
                tokens, padding = queue.pop(0)
                consumed.append(step)
                if tokens:
                    queued += tokens
                    with_tokens = [t for t, _ in queue if t]
                    ahead += with_tokens[lookahead - 1] if len(with_tokens) >= lookahead else []
                    remaining = max_padding
                else:
                    token = PAD  # a break
                forced = padding
            else:
                token = NEW_WORD if end is None else PAD  # with a second stream, one last new word
                end = step if end is None else end
        if token == PAD:
            remaining, forced = max(remaining - 1, 0), max(forced - 1, 0)
            main, second = (queued.pop(0) if queued else PAD), (ahead.pop(0) if ahead else ZERO)
        else:  # the new-word token goes to the second stream; the main stream gets the word's first token
            main, second = (queued.pop(0) if queued else PAD), NEW_WORD
        fed.append((second + 1) * card + main)
    return fed, consumed, end


def test_runs_follow_the_state_machine():
    g, cfg = load_golden("tts_tiny"), _cfg()
    card = cfg["text_card"] + 1
    splits = np.cumsum(g["entries.lengths"])[:-1]
    entries = [(t.tolist(), int(p)) for t, p in zip(np.split(g["entries.tokens"], splits), g["entries.padding"])]
    assert entries[0][0][0] == MAIN  # the first word carries the main-speaker token
    # padding_between 1: padding = 1 + len(tokens) - 1; a break of 0.5 s: round(0.5 * 12.5) pads.
    words = [str(t) for t in g["entries.text"]]
    assert words == ["Hello", "world.", "", "How", "are", "you?", "I'm", "fine", "thanks."]
    assert [p for _, p in entries] == [len(t) if t else 6 for t, _ in entries]
    for run in RUNS:
        fed, consumed, end = _replay(entries, g[f"{run}.sampled_text"], card)
        np.testing.assert_array_equal(g[f"{run}.text"], fed)
        assert consumed == g[f"{run}.consumption_times"].tolist() and end == int(g[f"{run}.end_step"][0])
        np.testing.assert_array_equal(g[f"{run}.word_steps"], [s for s, w in zip(consumed, words) if w])
        assert g[f"{run}.words"].tolist() == [w for w in words if w]
        # The run ends final_padding (4) steps after the audio of the end step: end + 16 + 4 steps.
        assert len(fed) == end + DELAY_STEPS + 4
        # Both ways a word starts occur: the model asks (sampled new word while allowed), or max_padding
        # forces it; and the model also asks when it may not (ignored).
        asked = [s for s in consumed if g[f"{run}.sampled_text"][s] == NEW_WORD]
        assert len(asked) >= 2 and len(consumed) - len(asked) >= 2, (run, consumed, asked)
        assert (g[f"{run}.sampled_text"] == NEW_WORD).sum() > len(asked)
    assert not np.array_equal(g["distilled.text"], g["real_cfg.text"])


def test_audio_delays_forcing_and_frames():
    g, cfg = load_golden("tts_tiny"), _cfg()
    delays = np.array(cfg["delays"])
    for run in RUNS:
        text, audio, sampled, frames = (g[f"{run}.{k}"] for k in ("text", "audio", "audio_sampled", "frames"))
        T = len(text)
        assert audio.shape == sampled.shape == (T, 32) and frames.shape == (T - 2, 33)
        steps = np.arange(T)[:, None]
        # The depth transformer runs from step 16; codebook q is forced to -1 while step < delays[q + 1] + 16.
        np.testing.assert_array_equal(sampled == ZERO, np.broadcast_to(steps < DELAY_STEPS, sampled.shape))
        forced = steps < delays[1:][None] + DELAY_STEPS
        np.testing.assert_array_equal(audio == ZERO, forced)
        np.testing.assert_array_equal(audio[~forced], sampled[~forced])
        assert ((sampled[DELAY_STEPS:] >= 0) & (sampled[DELAY_STEPS:] < cfg["card"])).all()
        # Frame i: text and codebook 0 of step i, codebooks 1-31 of step i + 2.
        np.testing.assert_array_equal(frames[:, 0], text[:T - 2])
        np.testing.assert_array_equal(frames[:, 1], audio[:T - 2, 0])
        np.testing.assert_array_equal(frames[:, 2:], audio[2:, 1:])
        assert (frames[DELAY_STEPS:, 1:] >= 0).all()  # every decoded frame is complete
        assert min(len(np.unique(c)) for c in frames[DELAY_STEPS:, 1:9].T) >= 2
        # The logits: greedy, and the text head's argmax before the state machine.
        np.testing.assert_array_equal(g[f"{run}.text_logits"].argmax(-1), g[f"{run}.sampled_text"])
        logits = g[f"{run}.audio_logits"]
        np.testing.assert_array_equal(logits.argmax(-1), sampled[DELAY_STEPS:DELAY_STEPS + len(logits)])


def test_wav_is_run_tts_slicing():
    """moshi.run_tts: decode frames[16:], keep int(24000 * (end_step + 4) / 12.5) samples (fewer exist: the
    run stops end_step + 20 steps in, so the WAV holds end_step + 2 frames), clamp to [-1, 1]."""
    g = load_golden("tts_tiny")
    for run in RUNS:
        end, frames, pcm = int(g[f"{run}.end_step"][0]), g[f"{run}.frames"], g[f"{run}.pcm"]
        available = (len(frames) - DELAY_STEPS) * FRAME
        assert pcm.dtype == np.float32 and pcm.shape == (1, min(available, (end + 4) * FRAME))
        assert pcm.shape[-1] == (end + 2) * FRAME
        assert np.abs(pcm).max() <= 1.0 and pcm.std() > 0.05 and np.isfinite(pcm).all()


def test_moshi_mlx_report_part():
    """tts_mlx.py's run of moshi_mlx 0.3.0's TTS path (for reports): it agrees with PyTorch at the start."""
    g = load_golden("tts_tiny")
    t, m = g["distilled.text"], g["mlx_distilled.text"]
    np.testing.assert_array_equal(t[:24], m[:24])
    np.testing.assert_array_equal(g["distilled.frames"][DELAY_STEPS:DELAY_STEPS + 8, 1:],
                                  g["mlx_distilled.audio_frames"][:8])
