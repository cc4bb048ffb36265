"""PyTorch reference for Kyutai's streaming text-to-speech (moshi==0.2.13): a tiny TTS checkpoint, a voice, goldens.

Run with the reference venv's python (tests/reference/build_envs.sh), never ours:
    python tts_torch.py OUT --mimi-dir tests/fixtures/mimi_tiny
Writes into OUT:
  - config.json + dsm_tts_<sig>@<epoch>.safetensors: a CFG-distilled model (it has the `cfg` LUT), the schema of
    kyutai/tts-1.6b-en_fr's config.json key for key and the PyTorch key layout of its
    dsm_tts_1e68beda@240.safetensors (bf16, the condition_provider float32), tiny sizes;
  - real_cfg/: the same weights less the `cfg` table and a config.json without it (real CFG is refused for a
    distilled model, so the real-CFG golden needs a model without the table); same model_id;
  - the Mimi (mimi_tiny with its codebooks cut to 64 entries, as stt_tiny) under the config's `mimi_name` +
    mimi_config.json, a real sentencepiece tokenizer, a voice `tiny_voice.wav.<sig>@<epoch>.safetensors`
    (`speaker_wavs` [1, 512, 125] float32, safetensors metadata {sig, epoch} as in kyutai/tts-voices), all
    also copied into real_cfg/;
  - golden.npz: TTSModel.generate greedy (temp 0) in fp32 on a multi-sentence script with a break, once with the
    distilled `cfg` LUT value ("2.0") and once with real CFG (coef 2, null conditions), as moshi.run_tts runs
    them (see the README of tests/fixtures).

What TTSModel.generate does per step (moshi 0.2.13, tts.py 493-625 and lm.py 668-850), and what is recorded:
  1. the temporal transformer on the previous step's tokens (text + 32 audio, the latter as delayed), with the
     summed conditions (`control` + `cfg` LUTs) added to the input and the speaker condition cross-attended in
     every layer; real CFG runs a doubled batch whose second half has null conditions and, after step 0, the
     zero text token (-1, embedded as 0);
  2. text logits (real CFG: the conditioned half only, no guidance) -> greedy token (`sampled_text`);
  3. the state machine turns it into the token fed to the model (`text`: main + (second + 1) * (text_card + 1));
  4. the depth transformer, from step 16 (= int(audio_delay 1.28 * 12.5)), fed that token first, samples the 32
     audio tokens (`audio_sampled`; real CFG: null + (cond - null) * 2 on each codebook's logits, both halves
     fed the same tokens); before step 16 it does not run (-1);
  5. tokens of codebook q are forced to -1 while step < delays[q + 1] + 16 (`audio`, what the model is fed);
  6. frame i (`frames`, undelayed: text and codebook 0 of step i, codebooks 1-31 of step i + 2) comes out at
     step i + 2; the WAV decodes frames[16:] and keeps (end_step + final_padding) frames' worth of samples.

Random weights would ask for a new word at every step or never. The text head is therefore shaped from the
states of provisional runs (shape_text_head) so that PAD (3) and the new-word token (0) dominate and a new word
wins at about one step in four, depending on the whole state; the state machine then forces some words (after
max_padding pads) and lets the model place others. The depth transformer's output heads and audio embeddings
are scaled up so that greedy audio choices vary and have clear margins. The script also checks the runs
against LMModel's batch forward, the state machine replayed alone, the frames' undelaying, that the voice and
the `cfg` value reach the logits, and that real CFG is refused for the distilled model.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from stt_torch import copy_mimi  # noqa: E402
from torch_side import fused_state_dict  # noqa: E402  (also sets one torch thread)

try:  # moshi.models.tts imports sphn (audio files) at module level; only get_prefix / run_tts's writer use it.
    import sphn  # noqa: F401
except ImportError:
    sys.modules["sphn"] = types.ModuleType("sphn")

from moshi.models import lm as lm_module  # noqa: E402
from moshi.models import loaders  # noqa: E402
from moshi.models import tts as tts_module  # noqa: E402

SEED = 2024

# kyutai/tts-1.6b-en_fr config.json, key for key and in its order, as far as public copies show it (its
# lm_gen_config really says "text_temp", not LMGen's "temp_text"; nothing reads it for TTS).
TTS_1_6B = {
    "card": 2048, "n_q": 32, "dep_q": 32, "delays": [0, 0] + [2] * 31, "dim": 2048, "text_card": 8000,
    "existing_text_padding_id": 3, "num_heads": 16, "num_layers": 16, "hidden_scale": 4.125, "causal": True,
    "layer_scale": None, "context": 500, "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 1024, "depformer_num_heads": 16, "depformer_num_layers": 4,
    "depformer_dim_feedforward": 3072, "depformer_multi_linear": True, "depformer_pos_emb": "none",
    "depformer_weights_per_step": True, "depformer_low_rank_embeddings": 128, "demux_second_stream": True,
    "text_card_out": None, "cross_attention": True,
    "conditioners": {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}},
        "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop",
                                       "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]}},
        "control": {"type": "lut", "lut": {"dim": 2048, "n_bins": 1, "tokenizer": "noop", "possible_values": ["ok"]}},
    },
    "fuser": {"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1, "sum": ["control", "cfg"],
              "prepend": [], "cross": ["speaker_wavs"]},
    "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
    "model_id": {"sig": "1e68beda", "epoch": 240},
    "depformer_weights_per_step_schedule": list(range(8)) + [8] * 8 + [9] * 8 + [10] * 8,
    "tokenizer_name": "tokenizer_spm_8k_en_fr_audio.model",
    "mimi_name": "tokenizer-e351c8d8-checkpoint125.safetensors",
    "moshi_name": "dsm_tts_1e68beda@240.safetensors",
    "model_type": "tts",
    "lm_gen_config": {"temp": 0.6, "text_temp": 0.6},
}
# Keys CheckpointInfo.from_hf_repo pops before the rest goes to LMModel as keyword arguments.
META_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
             "lm_gen_config", "tts_config", "stt_config", "model_id")

TOKENIZER_VOCAB = 96
MODEL_ID = {"sig": "7e57da7a", "epoch": 12}
VOICE_NAME = "tiny_voice.wav"  # a voice name as in kyutai/tts-voices: the .wav it was computed from
VOICE_FRAMES = 125  # 10 s of Mimi latents at 12.5 Hz, as published
MAX_STEPS = 400  # TTSModel.max_gen_length (30000 by default): a bound only, the end step stops far earlier

# Two sentences, a break in Kyutai's SSML syntax, and the rewrites script_to_entries does (’ -> ', ':' -> ' ',
# parentheses dropped): words Hello | world. | How | are | you? | I'm | fine | thanks.
SCRIPT = "Hello world. <break time=\"0.5s\"/> How are you? I\u2019m fine: (thanks)."
CFG_DISTILLED = 2.0  # the `cfg` LUT value, "2.0"
CFG_REAL = 2.0

# The text head (see shape_text_head): PAD's logit ~ PAD_LOGIT, every other token's below it, and the new-word
# token's = PAD's + N(NEW_WORD_BIAS, 1) * NEW_WORD_SPREAD over the steps, whichever the conditions.
PAD_LOGIT, OTHER_STD, NEW_WORD_BIAS, NEW_WORD_SPREAD = 2.0, 0.05, -0.8, 1.5
AUDIO_HEAD_GAIN = 6.0  # the depth transformer's output heads, scaled up for clear greedy margins
AUDIO_LOGIT_STEPS = 8  # golden audio logits: steps 16-23
DEP_EMB_GAIN = 4.0  # its audio-token embeddings, so that the previous codebook's token weighs in


def tts_config(real_cfg: bool = False) -> dict:
    """The tiny variant: every key of the published config; reduced widths. n_q = dep_q = 32, the delays and
    the 11-set weight schedule exactly as published (card 64 keeps the 32 codebooks cheap, as in stt_tiny);
    the two text streams, low-rank depformer embeddings (rank 16 < depformer dim 32), cross-attention in each
    of 2 temporal layers, both LUTs and the tensor conditioner as published. The depformer feed-forward keeps
    the published ratios (3 x its dim, gating hidden 2 x its dim). real_cfg: no `cfg` table."""
    cfg = copy.deepcopy(TTS_1_6B)
    cfg.update(dim=128, text_card=TOKENIZER_VOCAB, card=64, num_heads=2, num_layers=2, context=24,
               depformer_dim=32, depformer_num_heads=2, depformer_num_layers=2, depformer_dim_feedforward=96,
               depformer_low_rank_embeddings=16, model_id=dict(MODEL_ID),
               tokenizer_name=f"tokenizer_tiny_tts_{TOKENIZER_VOCAB}.model",
               moshi_name=f"dsm_tts_{MODEL_ID['sig']}@{MODEL_ID['epoch']}.safetensors")
    cfg["conditioners"]["control"]["lut"]["dim"] = 32
    if real_cfg:
        del cfg["conditioners"]["cfg"]
        cfg["fuser"]["sum"] = ["control"]
    return cfg


def lm_kwargs(cfg: dict) -> dict:
    # Deep copy: loaders.get_conditioner writes output_dim/device into the conditioner dicts it is given.
    return copy.deepcopy({k: v for k, v in cfg.items() if k not in META_KEYS})


# ----------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(path: Path):
    """A real sentencepiece BPE model, ids 0-3 specials as in Kyutai's (0 <unk> = new word, 1 <s> = main
    speaker, 2 </s> = other speaker, 3 <pad> = PAD). Covers every character of SCRIPT so that no piece is
    <unk> (0 would read as the new-word token). Trained from memory on one thread: the same bytes every time."""
    import sentencepiece as spm

    sentences = ["Hello world.", "How are you?", "I'm fine thanks.", "Hello, how are you doing?",
                 "The world is fine.", "Thanks, I'm here.", "Are you there?", "Fine words for the world.",
                 "How fine the weather is!", "You are welcome."]
    lines = [" ".join(sentences[i:] + sentences[:i]) for i in range(len(sentences))] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=TOKENIZER_VOCAB, model_type="bpe",
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, normalization_rule_name="identity",
        num_threads=1, minloglevel=2)
    path.write_bytes(buf.getvalue())
    return spm.SentencePieceProcessor(model_file=str(path))


# ------------------------------------------------------------------------------------------------ LM


def build_lm(cfg: dict) -> torch.nn.Module:
    """Random weights as moshi initialises them, a few scaled (see the module docstring). The text head is a
    provisional one (small random rows: every word waits for max_padding) until shape_text_head."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs(cfg), dtype=torch.float32)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith(".alpha"):  # RMSNorm gains away from 1, so that a skipped norm shows
                p.data = 1.0 + 0.3 * torch.randn(p.shape, generator=gen)
            elif ".norm_cross." in name:  # LayerNorm with bias: neither the identity nor bias-free
                p.data = (1.0 if name.endswith(".weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=gen)
        for lin in lm.linears:
            lin.weight.mul_(AUDIO_HEAD_GAIN)
        for emb in lm.depformer_emb:
            emb.weight.mul_(DEP_EMB_GAIN)
        lm.text_linear.weight.normal_(0.0, OTHER_STD, generator=gen)
    return lm


def shape_text_head(lm, groups: list[torch.Tensor], gen: torch.Generator) -> None:
    """Random text rows ask for a new word nearly always or never: the normed transformer output h has a large
    constant part (summed conditions, norm gains) that moves with the conditions and once audio comes in.
    From h of the provisional runs, in groups (each run's conditioned half, before and after step 17):
    PAD's row reads the mean (logit ~ PAD_LOGIT); the new-word row is PAD's + a random direction over the
    varying part (N(0, NEW_WORD_SPREAD^2) over steps) + NEW_WORD_BIAS * NEW_WORD_SPREAD along the mean, both
    blind to the differences between the groups' means (the same odds in every group). Other tokens: small
    random rows (they win now and then; the state machine reads them as PAD)."""
    means = torch.stack([h.mean(0) for h in groups])
    mu = means.mean(0)
    spread, _ = torch.linalg.qr((means - mu).T)  # [dim, groups]: the directions the groups differ in
    spread = spread[:, :len(groups) - 1]

    def blind(x):
        return x - spread @ (spread.T @ x)

    v = blind(mu)
    varying = torch.cat([h - m for h, m in zip(groups, means)])
    r = blind(torch.randn(mu.shape, generator=gen))
    r = r - (r @ v) / (v @ v) * v
    r = r * NEW_WORD_SPREAD / (varying @ r).std()
    w = lm.text_linear.weight
    w[:] = OTHER_STD * torch.randn(w.shape, generator=gen)
    w[3] = PAD_LOGIT * mu / (mu @ mu)
    w[0] = w[3] + r + NEW_WORD_BIAS * NEW_WORD_SPREAD * v / (v @ mu)


def transformer_inputs(lm, run: dict) -> torch.Tensor:
    """What the temporal transformer read at each step of a run, [1, 33, T]: position t holds the fed text of
    step t-1 and the (forced) audio tokens of step t-1, or the initial tokens (text_card, card) while t <= the
    stream's delay (lm.py 698-702)."""
    text, audio = run["text"], run["audio"]
    T, K = audio.shape
    seq = np.empty((1, K + 1, T), np.int64)
    seq[0, 0, 0], seq[0, 0, 1:] = lm.text_card, text[:-1]
    for k, delay in enumerate(lm.delays[1:]):
        seq[0, k + 1, :delay + 1] = lm.card
        seq[0, k + 1, delay + 1:] = audio[delay:T - 1, k]
    return torch.from_numpy(seq)


def calibrate_text_head(lm, runs: list[dict], delay_steps: int) -> None:
    groups = []
    with torch.no_grad():
        for run in runs:
            cond_sum, cond_cross = (torch.from_numpy(run[k][:1]) for k in ("cond_sum", "cond_cross"))
            h, _ = lm.forward_text(transformer_inputs(lm, run), cond_sum, cond_cross)
            groups += [h[0, :delay_steps + 1], h[0, delay_steps + 1:]]
        shape_text_head(lm, groups, torch.Generator().manual_seed(SEED + 5))


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """The published dtypes: bf16, except the condition_provider (kept float32, as moshi loads it)."""
    save_file({k: v if k.startswith("condition_provider.") else v.to(torch.bfloat16) for k, v in state.items()},
              str(path))


def write_voice(path: Path, dim: int) -> torch.Tensor:
    """A random voice in the kyutai/tts-voices format: `speaker_wavs` [1, dim, frames] float32 (channels first,
    as Mimi latents), the model signature in the safetensors metadata."""
    gen = torch.Generator().manual_seed(SEED + 3)
    t = torch.arange(VOICE_FRAMES, dtype=torch.float32)
    # Slowly varying channels (real voices are Mimi latents of speech), then unit variance.
    x = torch.randn(1, dim, 1, generator=gen) + torch.sin(t * torch.rand(1, dim, 1, generator=gen) * 0.5
                                                           + 6.28 * torch.rand(1, dim, 1, generator=gen))
    x = x + 0.3 * torch.randn(1, dim, VOICE_FRAMES, generator=gen)
    x = (x / x.std()).contiguous()
    # safetensors writes its metadata in hash-map order (a different file each run): the same layout, by hand,
    # with sorted keys. The header is padded with spaces to a multiple of 8 bytes, as safetensors does.
    header = json.dumps({"__metadata__": {"epoch": str(MODEL_ID["epoch"]), "sig": MODEL_ID["sig"]},
                         "speaker_wavs": {"dtype": "F32", "shape": list(x.shape),
                                          "data_offsets": [0, x.numel() * 4]}}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + x.numpy().astype("<f4").tobytes())
    return x


# ------------------------------------------------------------------------------------------ generation


class RecordingLMGen(lm_module.LMGen):
    """moshi's LMGen, recording what TTSModel's hooks see and do (installed as tts.LMGen for one run)."""

    last: "RecordingLMGen | None" = None

    def __init__(self, *args, on_text_logits_hook=None, on_text_hook=None, on_audio_hook=None, **kwargs):
        rec = self.rec = {"text_logits": [], "sampled_text": [], "text": [], "audio_sampled": [], "audio": [],
                          "audio_logits": []}

        def text_logits_hook(x):
            if on_text_logits_hook is not None:
                on_text_logits_hook(x)  # TTSModel's: the padding bonus
            rec["text_logits"].append(x[0, 0, 0].float().clone())

        def text_hook(tokens):
            rec["sampled_text"].append(int(tokens[0]))
            on_text_hook(tokens)  # the state machine, in place
            rec["text"].append(int(tokens[0]))
            rec["audio_logits"].append([])

        def audio_hook(tokens):
            rec["audio_sampled"].append(tokens[0].clone())
            on_audio_hook(tokens)  # forced zero audio, in place
            rec["audio"].append(tokens[0].clone())

        super().__init__(*args, on_text_logits_hook=text_logits_hook, on_text_hook=text_hook,
                         on_audio_hook=audio_hook, **kwargs)
        RecordingLMGen.last = self

    def _init_streaming_state(self, batch_size: int):
        state = super()._init_streaming_state(batch_size)
        self.conditions = (state.condition_sum, state.condition_cross)
        return state


def _recording_sample_token(original, card: int):
    def sample(logits, *args, **kwargs):
        gen = RecordingLMGen.last
        if gen is not None and logits.shape[-1] == card and gen.rec["audio_logits"]:
            gen.rec["audio_logits"][-1].append(logits[0].reshape(-1).float().clone())  # after CFG mixing
        return original(logits, *args, **kwargs)
    return sample


def load_tts(d: Path, cfg: dict, cfg_coef: float) -> "tts_module.TTSModel":
    """TTSModel.from_checkpoint_info as moshi.run_tts calls it (its defaults: max_padding 8, initial_padding 2,
    final_padding 4, padding_bonus 0, n_q 32), every file local, fp32, greedy."""
    info = loaders.CheckpointInfo.from_hf_repo(
        "local/unused", moshi_weights=d / cfg["moshi_name"], mimi_weights=d / cfg["mimi_name"],
        tokenizer=d / cfg["tokenizer_name"], config_path=d / "config.json",
        mimi_config_path=d / "mimi_config.json")
    return tts_module.TTSModel.from_checkpoint_info(
        info, voice_repo=str(d), n_q=32, temp=0.0, cfg_coef=cfg_coef, max_padding=8, initial_padding=2,
        final_padding=4, padding_bonus=0.0, max_gen_length=MAX_STEPS, device="cpu", dtype=torch.float32)


def tts_run(model, voice: Path) -> dict:
    """moshi.run_tts's _flush for one request (run_tts.py 87-160), with everything recorded."""
    distilled = bool(model.valid_cfg_conditionings)
    cfg_conditioning = None
    if distilled:  # run_tts.py 92-97
        cfg_conditioning = model.cfg_coef
        model.cfg_coef = 1.0
    entries = model.prepare_script([SCRIPT], padding_between=1)
    attributes = [model.make_condition_attributes([voice], cfg_conditioning)]
    original_gen, original_sample = tts_module.LMGen, lm_module.sample_token
    tts_module.LMGen = RecordingLMGen
    lm_module.sample_token = _recording_sample_token(original_sample, model.lm.card)
    try:
        result = model.generate([entries], attributes, cfg_is_no_prefix=not distilled,
                                cfg_is_no_text=not distilled)
    finally:
        tts_module.LMGen, lm_module.sample_token = original_gen, original_sample
    gen, RecordingLMGen.last = RecordingLMGen.last, None
    rec = gen.rec
    steps = len(rec["text"])
    wav_frames = []
    with torch.no_grad(), model.mimi.streaming(1):
        for frame in result.frames[model.delay_steps:]:
            wav_frames.append(model.mimi.decode(frame[:, 1:]))
    wavs = torch.cat(wav_frames, dim=-1)
    end_step = result.end_steps[0]
    assert end_step is not None, "the script did not finish within MAX_STEPS"
    wav_length = int(model.mimi.sample_rate * (end_step + model.final_padding) / model.mimi.frame_rate)
    pcm = wavs[0, :, :wav_length].clamp(-1, 1)  # what sphn.write_wav gets (it writes 16-bit PCM)
    audio_logits = np.full((steps, model.lm.dep_q, model.lm.card), np.nan, np.float32)
    for t, per_cb in enumerate(rec["audio_logits"]):
        if per_cb:
            audio_logits[t] = torch.stack(per_cb).numpy()
    cond_sum, cond_cross = gen.conditions
    out = {
        "text": np.array(rec["text"], np.int32),
        "sampled_text": np.array(rec["sampled_text"], np.int32),
        "text_logits": torch.stack(rec["text_logits"]).numpy().astype(np.float32),
        "audio_sampled": torch.stack(rec["audio_sampled"]).numpy().astype(np.int32),
        "audio": torch.stack(rec["audio"]).numpy().astype(np.int32),
        "audio_logits": audio_logits,
        "frames": torch.cat(result.frames, dim=-1)[0].T.numpy().astype(np.int32),
        "end_step": np.array([end_step], np.int32),
        "consumption_times": np.array(result.all_consumption_times[0], np.int32),
        "word_steps": np.array([s for _, s in result.all_transcripts[0]], np.int32),
        "words": np.array([w for w, _ in result.all_transcripts[0]]),
        "pcm": pcm.numpy().astype(np.float32),
        "cond_sum": cond_sum.float().numpy(),
        "cond_cross": cond_cross.float().numpy(),
    }
    assert [tok for tok, _ in result.logged_text_tokens[0]] == rec["sampled_text"]
    assert [tok for _, tok in result.logged_text_tokens[0]] == rec["text"]
    return out | {"_entries": entries, "_attributes": attributes}


# -------------------------------------------------------------------------------------------- checks


def check_state_machine(model, run: dict) -> None:
    """Replaying the sampled tokens through a fresh StateMachine gives the fed tokens, the word steps and the
    end step (the machine depends on nothing else)."""
    machine = tts_module.StateMachine(model.machine.token_ids, model.machine.second_stream_ahead,
                                      max_padding=8, initial_padding=2)
    state = machine.new_state(run["_entries"])
    fed = [machine.process(t, state, int(tok))[0] for t, tok in enumerate(run["sampled_text"])]
    assert fed == run["text"].tolist()
    assert state.end_step == int(run["end_step"][0])
    assert state.consumption_times == run["consumption_times"].tolist()


def check_frames(model, run: dict) -> None:
    """Frame i holds the fed text and codebook 0 of step i and codebooks 1-31 of step i + 2 (delays 0, 0, 2...)."""
    frames, audio, text = run["frames"], run["audio"], run["text"]
    d = np.array(model.lm.delays)
    steps = np.arange(frames.shape[0])[:, None] + d[None]  # [F, 33]: the step each entry comes from
    assert frames.shape[0] == len(text) - d.max()
    np.testing.assert_array_equal(frames[:, 0], text[:frames.shape[0]])
    np.testing.assert_array_equal(frames[:, 1:], audio[steps[:, 1:], np.arange(audio.shape[1])])


def check_batch_forward(model, run: dict, real_cfg: bool) -> dict[str, float]:
    """The streaming run equals one batch forward of LMModel (forward_text + forward_depformer_training):
    position t reads the fed text of step t-1 and the audio tokens (forced) of step t-1, or the initial tokens
    (text_card, card) while t <= the stream's delay; real CFG's null half has the zero text token (-1) after
    position 0 and null conditions. The depth transformer at t reads the fed text of step t, then the tokens
    it sampled (before forcing), in both halves. Also checks that the voice and the `cfg` value matter."""
    lm = model.lm
    text, sampled = run["text"], run["audio_sampled"]
    seq = transformer_inputs(lm, run)
    dep_seq = torch.from_numpy(np.concatenate([text[None], sampled.T])[None].astype(np.int64))
    attributes = list(run["_attributes"])
    if real_cfg:
        attributes += tts_module._make_null(attributes)

    def text_and_audio_logits(attrs):
        conds = lm.condition_provider.prepare_and_provide(attrs)
        inp = seq
        if real_cfg:
            null = seq.clone()
            null[:, 0, 1:] = lm.zero_token_id
            inp = torch.cat([seq, null], dim=0)
        with torch.no_grad():
            out, text_logits = lm.forward_text(inp, lm.fuser.get_sum(conds), lm.fuser.get_cross(conds))
            audio_logits = lm.forward_depformer_training(dep_seq.expand(inp.shape[0], -1, -1), out)
        if real_cfg:
            cond, null = audio_logits.chunk(2)
            audio_logits = null + (cond - null) * model.cfg_coef
        return text_logits[0, 0], audio_logits[0].permute(1, 0, 2)  # [T, text_card], [T, 32, card]

    text_logits, audio_logits = text_and_audio_logits(attributes)
    err_text = (text_logits - torch.from_numpy(run["text_logits"])).abs().max().item()
    assert err_text < 1e-3, f"streaming text logits differ from the batch forward by {err_text}"
    ran = np.nonzero((sampled >= 0).all(-1))[0]
    batch_audio = audio_logits[ran].numpy()
    err_audio = np.abs(batch_audio - run["audio_logits"][ran]).max()
    assert err_audio < 1e-3, f"streaming audio logits differ from the batch forward by {err_audio}"
    assert (batch_audio.argmax(-1) == sampled[ran]).all()

    def moved(attrs) -> float:
        t, a = text_and_audio_logits(attrs)
        return min((t - text_logits).abs().max().item(), (a[ran] - audio_logits[ran]).abs().max().item())

    other_voice = copy.deepcopy(run["_attributes"][0])
    cond = other_voice.tensor["speaker_wavs"]
    other_voice.tensor["speaker_wavs"] = type(cond)(cond.tensor.flip(1), cond.mask)
    if real_cfg:
        checks = {"voice": moved([other_voice] + attributes[1:])}
    else:
        other_cfg = copy.deepcopy(run["_attributes"][0])
        other_cfg.text["cfg"] = "3.5"
        checks = {"voice": moved([other_voice]), "cfg value": moved([other_cfg])}
    for what, delta in checks.items():
        assert delta > 0.05, f"the {what} barely changes the logits ({delta})"
    return {"text": err_text, "audio": float(err_audio)} | checks


def check_distilled_refuses_real_cfg(d: Path, cfg: dict, voice: Path) -> None:
    model = load_tts(d, cfg, cfg_coef=2.0)
    entries = model.prepare_script([SCRIPT], padding_between=1)
    try:
        model.generate([entries], [model.make_condition_attributes([voice], None)])
    except ValueError as e:
        assert "CFG distillation" in str(e)
    else:
        raise AssertionError("real CFG on a distilled model was not refused")


def margins(run: dict) -> tuple[float, float]:
    """Smallest greedy top-1 margins: text over all steps, audio over the steps where the depformer ran."""
    t = np.sort(run["text_logits"], axis=-1)
    a = run["audio_logits"][~np.isnan(run["audio_logits"][:, 0, 0])]
    a = np.sort(a, axis=-1)
    return float((t[:, -1] - t[:, -2]).min()), float((a[..., -1] - a[..., -2]).min())


# ---------------------------------------------------------------------------------------------- main


def describe(name: str, run: dict, sp, token_card: int) -> str:
    marks = []
    for tok, sampled in zip(run["text"], run["sampled_text"]):
        main, second = int(tok) % token_card, int(tok) // token_card - 1
        m = "_" if main == 3 else "|" if main == 0 else "S" if main == 1 else sp.id_to_piece(main)
        s = "" if second < 0 else "^" if second == 0 else f"<{sp.id_to_piece(second)}>"
        marks.append(("*" if sampled == 0 else "") + m + s)
    words = ", ".join(f"{w}@{s}" for w, s in zip(run["words"], run["word_steps"]))
    return (f"{name}: {len(run['text'])} steps, end step {int(run['end_step'][0])}, "
            f"{run['pcm'].shape[-1] / common.SAMPLE_RATE:.2f} s of audio\n  words: {words}\n"
            f"  fed text (*: sampled new word, ^: new word on the second stream, <x>: lookahead): "
            f"{' '.join(marks)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--mimi-dir", type=Path, required=True, help="the tiny Mimi fixture (tests/fixtures/mimi_tiny)")
    a = p.parse_args()
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    cfg, real = tts_config(), tts_config(real_cfg=True)
    sp = train_tokenizer(out / cfg["tokenizer_name"])
    assert sp.get_piece_size() == cfg["text_card"]
    copy_mimi(a.mimi_dir, out, cfg["mimi_name"], cfg["card"])
    common.write_json(out / "config.json", cfg)
    voice_file = out / f"{VOICE_NAME}.{MODEL_ID['sig']}@{MODEL_ID['epoch']}.safetensors"
    write_voice(voice_file, cfg["conditioners"]["speaker_wavs"]["tensor"]["dim"])

    rd = out / "real_cfg"
    rd.mkdir(exist_ok=True)
    common.write_json(rd / "config.json", real)
    for name in (cfg["mimi_name"], "mimi_config.json", cfg["tokenizer_name"], voice_file.name):
        shutil.copyfile(out / name, rd / name)
    variants = (("distilled", out, cfg, CFG_DISTILLED), ("real_cfg", rd, real, CFG_REAL))

    def save_both(lm) -> None:
        state = fused_state_dict(lm)
        save_weights(state, out / cfg["moshi_name"])
        save_weights({k: v for k, v in state.items() if not k.startswith("condition_provider.conditioners.cfg.")},
                     rd / real["moshi_name"])

    # Provisional runs (every word waits for max_padding), whose states shape the final text head.
    lm = build_lm(cfg)
    save_both(lm)
    provisional = [tts_run(load_tts(d, c, cfg_coef=coef), d / voice_file.name) for _, d, c, coef in variants]
    calibrate_text_head(lm, provisional, delay_steps=16)
    save_both(lm)

    check_distilled_refuses_real_cfg(out, cfg, voice_file)
    golden: dict[str, np.ndarray] = {"script": np.array(SCRIPT)}
    reports = []
    for name, d, c, coef in variants:
        model = load_tts(d, c, cfg_coef=coef)
        # The voice by name, as TTSModel resolves it: <name> + .<sig>@<epoch>.safetensors.
        run = tts_run(model, model.get_voice_path(str(d / VOICE_NAME)))
        check_state_machine(model, run)
        check_frames(model, run)
        errs = check_batch_forward(model, run, real_cfg=name == "real_cfg")
        if name == "distilled":
            entries = run["_entries"]
            golden["entries.tokens"] = np.array([t for e in entries for t in e.tokens], np.int32)
            golden["entries.lengths"] = np.array([len(e.tokens) for e in entries], np.int32)
            golden["entries.padding"] = np.array([e.padding for e in entries], np.int32)
            golden["entries.text"] = np.array([e.text for e in entries])
        for key, value in run.items():
            if key == "audio_logits":  # the first depth-transformer steps only (size)
                value = value[model.delay_steps:model.delay_steps + AUDIO_LOGIT_STEPS]
            if not key.startswith("_") and not (name == "real_cfg" and key == "cond_cross"):
                golden[f"{name}.{key}"] = value
        tm, am = margins(run)
        moves = ", ".join(f"{k} moves logits by {v:.2f}" for k, v in errs.items() if k not in ("text", "audio"))
        reports.append(describe(name, run, sp, model.machine.token_ids.card)
                       + f"\n  batch forward vs streaming: text {errs['text']:.1e}, audio {errs['audio']:.1e}; "
                       + moves + f"\n  smallest greedy margins: text {tm:.2e}, audio {am:.2e}")
    common.save_npz(out / "torch_golden.npz", golden)  # tts_mlx.py adds its part into golden.npz
    print("\n".join(reports))


if __name__ == "__main__":
    main()
