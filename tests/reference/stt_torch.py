"""PyTorch reference for Kyutai's streaming speech-to-text (moshi==0.2.13): a tiny STT checkpoint and goldens.

Run with the reference venv's python (tests/reference/build_envs.sh), never ours:
    python stt_torch.py OUT --mimi-dir tests/fixtures/mimi_tiny
Writes into OUT: config.json (the published STT schema, tiny sizes), model.safetensors (bf16, the PyTorch/candle
key layout with the four `extra_heads`), the Mimi under the config's `mimi_name` + mimi_config.json, a real
sentencepiece tokenizer under `tokenizer_name`, and torch_golden.npz (stt_mlx.py then adds its part).

Kyutai's STT (kyutai/stt-1b-en_fr, stt-2.6b-en) is an LMModel with dep_q 0 (no depformer), n_q 32 and every
delay 0: each step reads the text token of the step before and the 32 Mimi codes of the frame before, and
emits one text token. The protocol (kyutai-labs/delayed-streams-modeling scripts/stt_from_file_pytorch.py):
ceil(prefix_seconds * 12.5) silent frames, the clip (last frame zero-padded), ceil(delay_seconds * 12.5)
silent frames; streaming Mimi encode frame by frame; one greedy LM step per frame.

Alignment. As trained (LMModel.forward, moshi_mlx, Kyutai's run_inference.py), the frame given at step t is
seen at step t+1 and step 0 sees the initial tokens. LMGen with delay 0 reads a frame in the step it is given
and never shows the first one (step 0 is the initial step), so it is fed frame 0 twice, [f0, f0, f1, ...]:
its step k then equals the trained step k (fed frame k, sees frame k-1). run_inference.py does the same.

Random weights would almost never emit PAD (3) or EPAD (0). A few residual-stream channels are therefore
reserved (see `STATE`) and written only by the embeddings (the transformer's output projections are zero on
them): which kind of text token came before (PAD / EPAD / inside a word / end of a word / which word piece)
and an audio "activity" read from the first codebook. The text head reads them as a tiny grammar (pads;
EPAD when the audio says so; a word of 1-3 pieces from a small lexicon; pads again), plus random rows over
every other channel, so that which word, and when, still depend on the whole transformer (attention over the
context window included).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from torch_side import fused_state_dict, mimi_stream  # noqa: E402  (also sets one torch thread)

from moshi.models import lm as lm_module  # noqa: E402
from moshi.models import loaders  # noqa: E402

SEED = 4321

# kyutai/stt-1b-en_fr(-candle) config.json, key for key (the stt-2.6b-en one has the same keys, less the
# extra heads). depformer_* are unused with dep_q 0 but present, as published.
STT_1B = {
    "card": 2048, "n_q": 32, "dep_q": 0, "delays": [0] * 33, "dim": 2048, "text_card": 8000,
    "existing_text_padding_id": 3, "num_heads": 16, "num_layers": 16, "hidden_scale": 4.125, "causal": True,
    "layer_scale": None, "context": 750, "max_period": 100000.0, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 1024, "depformer_num_heads": 16, "depformer_num_layers": 6,
    "depformer_dim_feedforward": None, "depformer_multi_linear": True, "depformer_pos_emb": "none",
    "depformer_weights_per_step": True, "conditioners": {}, "cross_attention": False,
    "extra_heads_num_heads": 4, "extra_heads_dim": 6,
    "model_id": {"sig": "tiny-random", "epoch": 0},
    "lm_gen_config": {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
    "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 1.0},
    "model_type": "stt", "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
    "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
}
# Keys CheckpointInfo.from_hf_repo pops before the rest goes to LMModel as keyword arguments.
META_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name", "model_type",
             "lm_gen_config", "tts_config", "stt_config", "model_id")


def stt_config() -> dict:
    """The tiny variant. dim 256 is the smallest for which moshi_mlx's q8 (group 64) and q4 (group 32) apply
    to every layer (its SwiGLU is 11 * dim / 4 wide). card 64 instead of 2048: with 32 codebooks the audio
    embeddings are 32 x (card + 1) x dim per file, 34 MB each at 2048 (see the Mimi below). context 24 is
    far shorter than the clip, so the attention window slides."""
    cfg = copy.deepcopy(STT_1B)
    cfg.update(dim=256, text_card=TOKENIZER_VOCAB, card=64, num_heads=2, num_layers=1, context=24,
               tokenizer_name="tokenizer_tiny_bpe_88.model")
    return cfg


# ----------------------------------------------------------------------------------------- tokenizer

TOKENIZER_VOCAB = 88
# Words of 1-3 pieces under the tokenizer below; each non-final piece has a single possible successor
# except the bare "▁", which starts both "moshi" and "quick".
LEXICON = ("hello", "world", "moshi", "speaks", "text", "talking", "streaming", "quick")


def train_tokenizer(path: Path):
    """A real sentencepiece BPE model, ids 0-3 specials as in Kyutai's (0 <unk> = EPAD, 3 <pad> = PAD).

    Trained from memory (no corpus path in the file) on one thread: the same bytes every time.
    """
    import sentencepiece as spm

    words = ("hello world moshi speaks listens streaming text while you talk the quick brown fox jumps over "
             "lazy dogs speaking listening streams talking texts").split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=TOKENIZER_VOCAB, model_type="bpe",
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, normalization_rule_name="identity",
        num_threads=1, minloglevel=2)
    path.write_bytes(buf.getvalue())
    return spm.SentencePieceProcessor(model_file=str(path))


# ---------------------------------------------------------------------------------------------- Mimi


def copy_mimi(src: Path, out: Path, name: str, bins: int) -> Path:
    """tests/fixtures/mimi_tiny with each of its 32 codebooks cut to its first `bins` entries.

    Everything else is that Mimi's weights unchanged; the entries are random draws, so any prefix of them
    is as good a codebook.
    """
    cfg = json.loads((src / "mimi_config.json").read_text())
    cfg["quantizer"]["bins"] = bins
    state = load_file(str(src / common.MIMI_FILE))
    for key in state:
        if key.endswith("_codebook.embedding_sum") or key.endswith("_codebook.cluster_usage"):
            state[key] = state[key][:bins].contiguous()
    path = out / name
    save_file(state, str(path))
    common.write_json(out / "mimi_config.json", cfg)
    return path


def dsm_input(pcm: np.ndarray, stt: dict) -> tuple[np.ndarray, int, int]:
    """The padded input of stt_from_file_pytorch.py: silent prefix frames, the clip padded to whole frames,
    silent suffix frames. Returns ([1, 1, T * 1920] float32, prefix frames, suffix frames)."""
    prefix = math.ceil(stt["audio_silence_prefix_seconds"] * common.SAMPLE_RATE / common.FRAME)
    suffix = math.ceil(stt["audio_delay_seconds"] * common.SAMPLE_RATE / common.FRAME)
    tail = -pcm.shape[-1] % common.FRAME
    padded = np.concatenate([np.zeros(prefix * common.FRAME, np.float32), pcm.reshape(-1),
                             np.zeros(tail + suffix * common.FRAME, np.float32)])
    return padded[None, None], prefix, suffix


# ------------------------------------------------------------------------------------------------ LM

# Reserved residual channels: the kind of the previous text token, two audio activities (random per code,
# summed over codebooks 0-7 and 8-15), then one channel per lexicon piece.
STATE = {"pad": 0, "epad": 1, "end": 2, "audio": 3, "audio2": 4}
PIECES0 = 5
M = 3.0  # value of an active reserved channel (other channels of the residual stream are ~1)
# Text-head grammar, in logit units (x the unit below). Rows: the token emitted; columns: the previous kind.
#                  prev:  pad   epad  end   inside-a-word
GRAMMAR = {"pad":       (2.0, -5.0, 1.0, -5.0),
           "epad":      (0.0, -5.0, -0.5, -5.0),   # + AUDIO_GAIN * activity
           "start":     (-5.0, 1.0, -1.2, -5.0),   # a word's first piece, + START_GAIN * activity2
           "next":      (-5.0, -5.0, -5.0, 0.0),   # + 3 from the piece it follows
           "other":     (-6.0, -6.0, -6.0, -6.0)}
FOLLOW = 3.0
AUDIO_GAIN = 1.5  # EPAD: + AUDIO_GAIN * activity
START_GAIN = 1.0  # a word's first piece: + START_GAIN * activity2 (matters right after a word: two in a row)
UNIT = 3.0  # logit scale of one grammar unit, before the final RMS normalisation
NOISE = 0.10  # std of the random text-head rows over the free channels
SILENT_ACTIVITY = -1.0  # per codebook, for the codes of the silent prefix (and the initial token)


def lexicon_pieces(sp) -> tuple[list[int], set[int], set[int], dict[int, set[int]]]:
    """(pieces, word starts, word ends, successors) of LEXICON under the tokenizer."""
    pieces, starts, ends, inner, follow = [], set(), set(), set(), {}
    for word in LEXICON:
        ids = sp.encode(word)
        assert 1 <= len(ids) <= 3 and min(ids) > 3, (word, ids)
        for i, tok in enumerate(ids):
            if tok not in pieces:
                pieces.append(tok)
            if i > 0:
                follow.setdefault(ids[i - 1], set()).add(tok)
        starts.add(ids[0])
        ends.add(ids[-1])
        inner.update(ids[:-1])
    # A piece ends every word it is in, or none; a word's first piece never follows another one.
    assert not (inner & ends) and not (starts & set().union(*follow.values())), "ambiguous lexicon"
    return pieces, starts, ends, follow


def build_lm(cfg: dict, sp, silent_codes: list[set[int]]) -> torch.nn.Module:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs(cfg), dtype=torch.float32)
    pieces, starts, ends, follow = lexicon_pieces(sp)
    reserved = PIECES0 + len(pieces)
    col = {p: PIECES0 + i for i, p in enumerate(pieces)}
    text_card = cfg["text_card"]
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith(".alpha"):  # RMSNorm gains away from 1, so that a skipped norm shows
                p.data = 1.0 + 0.3 * torch.randn(p.shape, generator=gen)
            if name.endswith("out_projs.0.weight") or name.endswith("gating.linear_out.weight"):
                p.data[:reserved] = 0.0  # the transformer never writes the reserved channels
        lm.out_norm.alpha.data[..., :reserved] = 1.0
        # The previous text token's kind (and piece), written by the text embedding.
        te = lm.text_emb.weight
        te[:, :reserved] = 0.0
        te[:, STATE["pad"]] = M  # PAD, the initial token (text_card) and anything unused
        te[0, STATE["pad"]], te[0, STATE["epad"]] = 0.0, M
        for tok in pieces:
            te[tok, STATE["pad"]] = 0.0
            te[tok, col[tok]] = M
            if tok in ends:
                te[tok, STATE["end"]] = M
        # Audio activities: random values per code, summed over 8 codebooks; the codes of silence are quiet.
        for k, emb in enumerate(lm.emb):
            emb.weight[:, :reserved] = 0.0
            if k < 16:
                activity = torch.randn(cfg["card"] + 1, generator=gen)
                activity[sorted(silent_codes[k] | {cfg["card"]})] = SILENT_ACTIVITY
                emb.weight[:, STATE["audio" if k < 8 else "audio2"]] = M * activity / math.sqrt(8)
        # The text head: the grammar on the reserved channels, random rows on the others.
        w = lm.text_linear.weight
        w[:] = NOISE * torch.randn(w.shape, generator=gen)
        w[:, :reserved] = 0.0
        kinds = [STATE["pad"], STATE["epad"], STATE["end"]]

        def rule(tok: int, row: tuple[float, ...]) -> None:
            for c, v in zip(kinds, row[:3]):
                w[tok, c] = UNIT * v / M
            for p in pieces:  # inside a word: any piece not ending one
                if p not in ends:
                    w[tok, col[p]] = UNIT * row[3] / M

        for tok in range(text_card):
            rule(tok, GRAMMAR["other"])
        rule(3, GRAMMAR["pad"])
        rule(0, GRAMMAR["epad"])
        w[0, STATE["audio"]] = UNIT * AUDIO_GAIN / M
        for tok in pieces:
            if tok in starts:
                rule(tok, GRAMMAR["start"])
                w[tok, STATE["audio2"]] = UNIT * START_GAIN / M
            else:
                rule(tok, GRAMMAR["next"])
        for prev, nexts in follow.items():
            for tok in nexts:
                w[tok, col[prev]] += UNIT * FOLLOW / M
        for head in lm.extra_heads:  # peakier than nn.Linear's init, so that the softmax is not flat
            head.weight.mul_(4.0)
    return lm


def lm_kwargs(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in META_KEYS}


class TextSampler:
    """Stands in for moshi.models.lm.sample_token (only text is sampled with dep_q 0): greedy or forced."""

    def __init__(self, forced=None):
        self.forced, self.tokens = forced, []

    def __call__(self, logits, use_sampling=False, temp=1.0, top_k=0, top_p=0.0):
        step = len(self.tokens)
        tok = int(logits.argmax(-1).reshape(-1)[0]) if self.forced is None else int(self.forced[step])
        self.tokens.append(tok)
        return torch.full(logits.shape[:-1], tok, dtype=torch.long)


def stt_run(lm, codes: np.ndarray, forced=None) -> dict[str, np.ndarray]:
    """LMGen.step_with_extra_heads over the frames [f0, f0, f1, ..., f(T-2)] (see the module docstring).

    Returns text [T], text_logits [T, text_card], eot [T, heads, dim] (each extra head's softmax)."""
    sampler = TextSampler(forced)
    logits, eot, text = [], [], []
    original = lm_module.sample_token
    lm_module.sample_token = sampler
    try:
        gen = lm_module.LMGen(lm, use_sampling=False, temp=0.0, temp_text=0.0,
                              on_text_logits_hook=lambda x: logits.append(x.float().reshape(-1).numpy().copy()))
        fed = np.concatenate([codes[:1], codes[:-1]])
        with torch.no_grad(), gen.streaming(1):
            for frame in fed:
                out, heads = gen.step_with_extra_heads(torch.from_numpy(frame.astype(np.int64))[None, :, None])
                text.append(int(out[0, 0, 0]))
                eot.append(np.stack([h.float().reshape(-1).numpy() for h in heads]))
    finally:
        lm_module.sample_token = original
    assert text == sampler.tokens
    return {"text": np.array(text, np.int32), "text_logits": np.stack(logits).astype(np.float32),
            "eot": np.stack(eot).astype(np.float32)}


def check_trained_alignment(lm, cfg: dict, codes: np.ndarray, run: dict) -> None:
    """The streaming run must equal LMModel's training-time rule, one batch forward of the whole sequence:
    position t reads the text and audio of position t-1, position 0 the initial tokens."""
    steps = codes.shape[0]
    seq = np.empty((1, 1 + codes.shape[1], steps), np.int64)
    seq[0, 0] = np.r_[cfg["text_card"], run["text"][:-1]]
    seq[0, 1:, 0] = cfg["card"]
    seq[0, 1:, 1:] = codes[:-1].T
    with torch.no_grad():
        _, logits = lm.forward_text(torch.from_numpy(seq))
    err = np.abs(logits[0, 0].numpy() - run["text_logits"]).max()
    assert err < 1e-3, f"LMGen run is not the trained alignment: logits differ by {err}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--mimi-dir", type=Path, required=True, help="the tiny Mimi fixture (tests/fixtures/mimi_tiny)")
    p.add_argument("--seconds", type=float, default=3.5, help="clip length (not a whole number of frames)")
    a = p.parse_args()
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = stt_config()
    sp = train_tokenizer(out / cfg["tokenizer_name"])
    assert sp.get_piece_size() == cfg["text_card"]
    mimi_path = copy_mimi(a.mimi_dir, out, cfg["mimi_name"], cfg["card"])
    common.write_json(out / "config.json", cfg)

    # The published loading path, every file local: CheckpointInfo pops the metadata keys.
    def checkpoint(weights: Path):
        return loaders.CheckpointInfo.from_hf_repo(
            "local/unused", moshi_weights=weights, mimi_weights=mimi_path, tokenizer=out / cfg["tokenizer_name"],
            config_path=out / "config.json", mimi_config_path=out / "mimi_config.json")

    mimi = checkpoint(mimi_path).get_mimi()  # num_codebooks = max(dep_q, n_q - dep_q) = 32
    clip_len = int(round(a.seconds * common.SAMPLE_RATE))
    pcm = common.test_waveform(math.ceil(clip_len / common.FRAME), seed=SEED + 2)[..., :clip_len]
    padded, prefix, suffix = dsm_input(pcm, cfg["stt_config"])
    codes, _ = mimi_stream(mimi, padded, 32, decode=False)
    codes = codes[0].T.copy()  # [T, 32]
    silent = [set(codes[:prefix, k].tolist()) for k in range(codes.shape[1])]

    lm = build_lm(cfg, sp, silent)
    weights = out / "model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in fused_state_dict(lm).items()}, str(weights))

    golden = {"pcm": pcm, "padded_pcm": padded, "codes": codes.astype(np.int32),
              "prefix_frames": np.array(prefix, np.int32), "suffix_frames": np.array(suffix, np.int32)}
    runs = {}
    for name, dtype in (("torch_fp32", torch.float32), ("torch_bf16", torch.bfloat16)):
        runs[name] = stt_run(checkpoint(weights).get_moshi(dtype=dtype), codes)
        for key, value in runs[name].items():
            golden[f"{name}.{key}"] = value
    check_trained_alignment(checkpoint(weights).get_moshi(dtype=torch.float32), cfg, codes, runs["torch_fp32"])
    tf = stt_run(checkpoint(weights).get_moshi(dtype=torch.bfloat16), codes, forced=runs["torch_fp32"]["text"])
    golden["tf.torch_bf16.text_logits"] = tf["text_logits"].astype(np.float16)
    golden["tf.torch_bf16.eot"] = tf["eot"]
    common.save_npz(out / "torch_golden.npz", golden)
    print(describe(runs["torch_fp32"]["text"], sp, prefix))


def describe(text: np.ndarray, sp, prefix: int) -> str:
    """The token stream, one char per step (. PAD, | EPAD, piece otherwise), and the words it spells."""
    marks = "".join("." if t == 3 else "|" if t == 0 else f"[{sp.id_to_piece(int(t))}]" for t in text)
    words = sp.decode([int(t) for t in text if t > 3])
    return f"{len(text)} steps ({prefix} prefix): {marks}\n  text: {words!r}"


if __name__ == "__main__":
    main()
