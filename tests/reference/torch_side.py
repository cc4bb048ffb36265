"""PyTorch reference side (moshi==0.2.13): random weights in the published layouts, and goldens.

Run with the reference venv's python (tests/reference/build_envs.sh), never ours:
    python torch_side.py mimi OUT --size tiny|full
    python torch_side.py lm OUT --size tiny|mid
    python torch_side.py e2e OUT --mimi-dir DIR --lm-dir DIR
Writes the checkpoint (published PyTorch key layout) and `torch_golden.npz` into OUT (e2e: `golden.npz`
from the reference checkpoints of the two folders).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from moshi.models import lm as lm_module  # noqa: E402
from moshi.models import loaders  # noqa: E402

torch.set_num_threads(1)  # bitwise-reproducible CPU results
SEED = 1234


def fused_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict in the published layout: per-step attention projections fused back along dim 0.

    moshi 0.2.13 splits `in_proj_weight` / `out_proj.weight` into `in_projs.{i}` / `out_projs.{i}` with a
    load hook; the files users download hold the fused form.
    """
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, value in sd.items():
        for split, fused in ((".in_projs.", ".in_proj_weight"), (".out_projs.", ".out_proj.weight")):
            if split in key:
                prefix, rest = key.split(split)
                idx = int(rest.split(".")[0])
                groups.setdefault(prefix + fused, []).append((idx, value))
                break
        else:
            out[key] = value
    for key, parts in groups.items():
        out[key] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])], dim=0)
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------- Mimi


def _rescale_convs(module: torch.nn.Module, run, final_std: float | None = None) -> None:
    """Random convs explode or vanish; rescale each so its output has unit std on real input.

    One forward pass suffices: each hook rescales its weights and its own output before the next layer
    reads it.
    """
    convs = [m for m in module.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    last = convs[-1] if convs else None

    def hook(mod, _inp, out):
        target = final_std if (mod is last and final_std is not None) else 1.0
        scale = target / (out.std().item() + 1e-8)
        mod.weight.data *= scale
        if mod.bias is not None:
            mod.bias.data *= scale
        return out * scale

    handles = [c.register_forward_hook(hook) for c in convs]
    with torch.no_grad():
        run()
    for h in handles:
        h.remove()


def _randomize_transformer(tr: torch.nn.Module, gen: torch.Generator) -> None:
    """Layer scales and norms away from their init, so a wrong load cannot pass unnoticed."""
    for name, p in tr.named_parameters():
        if name.endswith("layer_scale_1.scale") or name.endswith("layer_scale_2.scale"):
            p.data = 0.2 + 0.4 * torch.rand(p.shape, generator=gen)
        elif ".norm" in name and name.endswith(".weight"):
            p.data = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
        elif ".norm" in name and name.endswith(".bias"):
            p.data = 0.1 * torch.randn(p.shape, generator=gen)


def _fit_codebooks(rvq, latent: torch.Tensor, gen: torch.Generator) -> None:
    """Fit each codebook to the residual it sees: Gaussian entries with that residual's mean and spread.

    Entries drawn from the data itself would shrink the fitting residual far faster than a held-out
    one, and the later codebooks would collapse to one code. `cluster_usage` is random so that the
    embedding_sum / usage division is exercised.
    """
    with torch.no_grad():
        y = rvq.input_proj(latent)  # [B, D, T]
        residual = y.transpose(1, 2).reshape(-1, y.shape[1])
        for layer in rvq.vq.layers:
            cb = layer._codebook
            bins, dim = cb.embedding_sum.shape
            mean, spread = residual.mean(0, keepdim=True), residual.std(0, keepdim=True)
            entries = mean + spread * torch.randn(bins, dim, generator=gen)
            usage = 0.5 + 1.5 * torch.rand(bins, generator=gen)
            cb.embedding_sum.copy_(entries * usage[:, None])
            cb.cluster_usage.copy_(usage)
            cb._initialized.fill_(1.0)
            emb = cb.embedding_sum / cb.cluster_usage.clamp(min=cb.epsilon)[:, None]
            idx = torch.cdist(residual, emb).argmin(1)
            residual = residual - emb[idx]


def build_mimi(cfg: dict, fit_seconds: float) -> torch.nn.Module:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    mimi = loaders.get_mimi(None, cfg, num_codebooks=32)
    mimi.eval()
    fit = torch.from_numpy(common.test_waveform(int(fit_seconds * 12.5), seed=SEED + 1))
    _rescale_convs(mimi.encoder, lambda: mimi.encoder(fit))
    _randomize_transformer(mimi.encoder_transformer, gen)
    _randomize_transformer(mimi.decoder_transformer, gen)
    with torch.no_grad():
        z = mimi.encoder_transformer(mimi.encoder(fit))[0]
    _rescale_convs(mimi.downsample, lambda: mimi.downsample(z))
    with torch.no_grad():
        latent = mimi.downsample(z)
    q = mimi.quantizer
    for rvq in (q.rvq_first, q.rvq_rest):
        _rescale_convs(rvq.input_proj, lambda: rvq.input_proj(latent)) if isinstance(
            rvq.input_proj, torch.nn.Conv1d) else None
        _fit_codebooks(rvq, latent, gen)
    with torch.no_grad():
        codes = mimi.quantizer.encode(latent)
        qlat = mimi.quantizer.decode(codes)
    _rescale_convs(mimi.upsample, lambda: mimi.upsample(qlat))
    with torch.no_grad():
        up = mimi.decoder_transformer(mimi.upsample(qlat))[0]
    _rescale_convs(mimi.decoder, lambda: mimi.decoder(up), final_std=0.2)
    return mimi


def mimi_stream(mimi, pcm: np.ndarray, num_codebooks: int, decode: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Streaming encode one 1920-sample frame at a time, then streaming decode of those codes."""
    mimi.set_num_codebooks(num_codebooks)
    x = torch.from_numpy(pcm)
    frames = x.shape[-1] // common.FRAME
    codes, audio = [], []
    with torch.no_grad():
        with mimi.streaming(1):
            for i in range(frames):
                codes.append(mimi.encode(x[:, :, i * common.FRAME:(i + 1) * common.FRAME]))
        all_codes = torch.cat(codes, dim=-1)
        if not decode:
            return all_codes.numpy().astype(np.int32), None
        with mimi.streaming(1):
            for i in range(frames):
                audio.append(mimi.decode(all_codes[:, :, i:i + 1]))
    return all_codes.numpy().astype(np.int32), torch.cat(audio, dim=-1).numpy().astype(np.float32)


def cmd_mimi(out: Path, size: str, seconds: float) -> None:
    cfg = common.mimi_config(size)
    tiny = size == "tiny"
    # The published size is slow on a CPU: a shorter fitting clip, and only the 8-codebook decode.
    mimi = build_mimi(cfg, fit_seconds=30.0 if tiny else 10.0)
    weights = out / common.MIMI_FILE
    save_file(fused_state_dict(mimi), str(weights))
    common.write_json(out / "mimi_config.json", cfg)
    # The goldens come from the file, exactly as a user would load it.
    mimi = loaders.get_mimi(weights, cfg, num_codebooks=32)
    pcm = common.test_waveform(int(seconds * 12.5), seed=SEED + 2)
    golden = {"pcm": pcm}
    for k in ((8, 32) if tiny else (8,)):
        golden[f"codes_{k}"], golden[f"decoded_{k}"] = mimi_stream(mimi, pcm, k)
    if not tiny:
        golden["codes_32"], _ = mimi_stream(mimi, pcm, 32, decode=False)
    common.save_npz(out / "torch_golden.npz", golden)


# ------------------------------------------------------------------------------------------------ LM


def build_lm(cfg: dict) -> torch.nn.Module:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED + 3)
    lm = loaders.get_moshi_lm(None, lm_kwargs=cfg, dtype=torch.float32)
    for name, p in lm.named_parameters():
        if name.endswith(".alpha"):  # RMSNorm gains away from 1, so a skipped norm shows
            p.data = 1.0 + 0.3 * torch.randn(p.shape, generator=gen)
    return lm


class Recorder:
    """Replaces `sample_token` in moshi.models.lm: greedy or forced tokens, logits recorded per call."""

    def __init__(self, forced_text=None, forced_audio=None):
        self.forced_text, self.forced_audio = forced_text, forced_audio
        self.text_logits, self.audio_logits = [], []
        self.text, self.audio = [], []
        self._k = 0

    def __call__(self, logits, use_sampling=False, temp=1.0, top_k=0, top_p=0.0):
        logits = logits.float()
        is_text = self._k == 0
        step = len(self.text_logits) - (0 if is_text else 1)
        if is_text:
            self.text_logits.append(logits.reshape(-1).numpy().copy())
            tok = int(logits.argmax(-1).reshape(-1)[0]) if self.forced_text is None else int(self.forced_text[step])
            self.text.append(tok)
            self.audio_logits.append([])
            self.audio.append([])
        else:
            self.audio_logits[-1].append(logits.reshape(-1).numpy().copy())
            k = self._k - 1
            tok = int(logits.argmax(-1).reshape(-1)[0]) if self.forced_audio is None else int(
                self.forced_audio[step, k])
            self.audio[-1].append(tok)
        self._k = (self._k + 1) % 9
        return torch.full(logits.shape[:-1], tok, dtype=torch.long)


def lm_run(lm, codes: np.ndarray, forced=None) -> dict[str, np.ndarray]:
    """Greedy (or teacher-forced) LMGen run; the user's frame t-1 is fed at step t (see FACTS.md)."""
    rec = Recorder(*(forced or (None, None)))
    original = lm_module.sample_token
    lm_module.sample_token = rec
    try:
        gen = lm_module.LMGen(lm, use_sampling=False, temp=0.0, temp_text=0.0)
        with torch.no_grad(), gen.streaming(1):
            for t in range(codes.shape[0]):
                prev = codes[t - 1] if t > 0 else np.zeros_like(codes[0])
                gen.step(torch.from_numpy(prev.astype(np.int64))[None, :, None])
    finally:
        lm_module.sample_token = original
    return {
        "text": np.array(rec.text, dtype=np.int32),
        "audio": np.array(rec.audio, dtype=np.int32),
        "text_logits": np.stack(rec.text_logits).astype(np.float32),
        "audio_logits": np.stack([np.stack(a) for a in rec.audio_logits]).astype(np.float32),
    }


def cmd_lm(out: Path, size: str) -> None:
    cfg = common.lm_config(size)
    steps = common.LM_STEPS[size]
    lm = build_lm(cfg)
    # The published PyTorch checkpoint is bf16: so is ours, and every run starts from that file.
    state = {k: v.to(torch.bfloat16) for k, v in fused_state_dict(lm).items()}
    weights = out / "model.safetensors"
    save_file(state, str(weights))
    common.write_json(out / "config.json", cfg)
    codes = common.user_codes(steps, cfg["card"], seed=SEED + 4)
    golden = {"user_codes": codes}
    runs = {}
    tiny = size == "tiny"
    # Beyond the committed tiny fixture, only the fp32 oracle is needed by the tests (and is fast enough).
    for name, dtype in (("torch_fp32", torch.float32), ("torch_bf16", torch.bfloat16))[:2 if tiny else 1]:
        model = loaders.get_moshi_lm(weights, lm_kwargs=cfg, dtype=dtype)
        runs[name] = lm_run(model, codes)
        golden[f"{name}.text"] = runs[name]["text"]
        golden[f"{name}.audio"] = runs[name]["audio"]
    golden["torch_fp32.text_logits"] = runs["torch_fp32"]["text_logits"]
    golden["torch_fp32.audio_logits"] = runs["torch_fp32"]["audio_logits"]
    if tiny:
        forced = (runs["torch_fp32"]["text"], runs["torch_fp32"]["audio"])
        model = loaders.get_moshi_lm(weights, lm_kwargs=cfg, dtype=torch.bfloat16)
        tf = lm_run(model, codes, forced=forced)
        golden["tf.torch_bf16.text_logits"] = tf["text_logits"].astype(np.float16)
        golden["tf.torch_bf16.audio_logits"] = tf["audio_logits"].astype(np.float16)
    if tiny:
        short = dict(cfg, context=common.LM_SHORT_CONTEXT)
        model = loaders.get_moshi_lm(weights, lm_kwargs=short, dtype=torch.float32)
        run = lm_run(model, codes)
        golden["ctx.context"] = np.array(common.LM_SHORT_CONTEXT, dtype=np.int32)
        for key, value in run.items():
            golden[f"ctx.torch_fp32.{key}"] = value
    common.save_npz(out / "torch_golden.npz", golden)


# ------------------------------------------------------------------------------------- end to end


def cmd_e2e(out: Path, mimi_dir: Path, lm_dir: Path, frames: int = 30) -> None:
    """Reference chain on a fixture WAV, fp32: Mimi streaming encode -> LM greedy -> Mimi streaming decode.

    Moshi's frame f is made of codebook k sampled at step f + delay_k; it is decoded in frame order.
    """
    import json

    mimi_cfg = json.loads((mimi_dir / "mimi_config.json").read_text())
    lm_cfg = json.loads((lm_dir / "config.json").read_text())
    mimi = loaders.get_mimi(mimi_dir / common.MIMI_FILE, mimi_cfg, num_codebooks=32)
    pcm = common.test_waveform(frames, seed=SEED + 5)
    user_q = lm_cfg["n_q"] - lm_cfg["dep_q"]
    codes, _ = mimi_stream(mimi, pcm, user_q)  # [1, 8, F]; the decode half is unused here
    user = codes[0].T.copy()  # [F, 8]
    lm = loaders.get_moshi_lm(lm_dir / "model.safetensors", lm_kwargs=lm_cfg, dtype=torch.float32)
    run = lm_run(lm, user)
    delays = lm_cfg["delays"][1:1 + lm_cfg["dep_q"]]
    done = frames - max(delays)
    moshi = np.stack([[run["audio"][f + d, k] for k, d in enumerate(delays)] for f in range(done)])
    mimi.set_num_codebooks(lm_cfg["dep_q"])
    audio = []
    with torch.no_grad(), mimi.streaming(1):
        for f in range(done):
            audio.append(mimi.decode(torch.from_numpy(moshi[f].astype(np.int64))[None, :, None]))
    reply = torch.cat(audio, dim=-1).numpy().astype(np.float32)
    common.save_npz(out / "golden.npz", {
        "pcm": pcm, "user_codes": user.astype(np.int32), "text": run["text"], "audio": run["audio"],
        "moshi_codes": moshi.astype(np.int32), "reply": reply})
    common.write_json(out / "sources.json", {"mimi": mimi_dir.name, "lm": lm_dir.name, "frames": frames})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("what", choices=["mimi", "lm", "e2e"])
    p.add_argument("out", type=Path)
    p.add_argument("--size", default="tiny")
    p.add_argument("--seconds", type=float, default=5.12, help="Mimi golden clip length")
    p.add_argument("--mimi-dir", type=Path, help="e2e: the Mimi reference folder")
    p.add_argument("--lm-dir", type=Path, help="e2e: the LM reference folder (card must match Mimi)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.what == "mimi":
        cmd_mimi(a.out, a.size, a.seconds)
    elif a.what == "lm":
        cmd_lm(a.out, a.size)
    else:
        cmd_e2e(a.out, a.mimi_dir, a.lm_dir)


if __name__ == "__main__":
    main()
