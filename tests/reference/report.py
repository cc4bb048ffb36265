"""Agreement between the references, from the fixture goldens (numpy only).

    python tests/reference/report.py [FIXTURES_DIR]
Prints token agreement and logit differences: PyTorch fp32 vs bf16, PyTorch vs moshi_mlx, moshi_mlx bf16 vs
q8/q4 (teacher-forced), Mimi codes PyTorch vs moshi_mlx (vs rustymimi where present), the same for STT, and
the TTS runs (word steps, margins, moshi_mlx's TTS path against PyTorch's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def first_divergence(a: np.ndarray, b: np.ndarray) -> str:
    diff = np.nonzero((a != b).reshape(a.shape[0], -1).any(1))[0]
    return "never" if diff.size == 0 else f"step {int(diff[0])}"


def lm_report(d: Path) -> None:
    g = common.load_npz(d / "golden.npz")
    ref_t, ref_a = g["torch_fp32.text"], g["torch_fp32.audio"]
    print(f"LM {d.name}: {ref_t.shape[0]} greedy steps; free-running vs torch_fp32")
    print(f"  {'run':<12} {'text agree':>10} {'audio agree':>11}  first divergence")
    for run in ("torch_bf16", "mlx_fp32", "mlx_bf16", "mlx_q8", "mlx_q4"):
        if f"{run}.text" not in g:
            continue
        t, a = g[f"{run}.text"], g[f"{run}.audio"]
        print(f"  {run:<12} {100 * (t == ref_t).mean():9.1f}% {100 * (a == ref_a).mean():10.1f}%  "
              f"{first_divergence(np.c_[t, a], np.c_[ref_t, ref_a])}")
    if "ctx.torch_fp32.text" in g:
        ct, ca = g["ctx.torch_fp32.text"], g["ctx.torch_fp32.audio"]
        mt, ma = g["ctx.mlx_fp32.text"], g["ctx.mlx_fp32.audio"]
        print(f"  context {int(g['ctx.context'].reshape(-1)[0])}: mlx_fp32 vs torch_fp32 first divergence "
              f"{first_divergence(np.c_[mt, ma], np.c_[ct, ca])}")
    print("  teacher-forced on torch_fp32 tokens: logits vs torch_fp32 (max abs / mean abs / top-1 agree)")
    ref = {"text": g["torch_fp32.text_logits"], "audio": g["torch_fp32.audio_logits"]}
    pairs = [(r, "torch_fp32") for r in ("torch_bf16", "mlx_fp32", "mlx_bf16", "mlx_q8", "mlx_q4",
                                          "mlx_q8_f32", "mlx_q4_f32")]
    pairs += [("mlx_q8", "mlx_bf16"), ("mlx_q4", "mlx_bf16"), ("mlx_bf16", "torch_bf16")]
    for run, base in pairs:
        if f"tf.{run}.text_logits" not in g or (base != "torch_fp32" and f"tf.{base}.text_logits" not in g):
            continue
        parts = []
        for kind in ("text", "audio"):
            x = g[f"tf.{run}.{kind}_logits"].astype(np.float32)
            y = ref[kind] if base == "torch_fp32" else g[f"tf.{base}.{kind}_logits"].astype(np.float32)
            err = np.abs(x - y)
            top1 = (x.argmax(-1) == y.argmax(-1)).mean()
            parts.append(f"{kind} {err.max():.2e}/{err.mean():.2e}/{100 * top1:.1f}%")
        print(f"  {run:>10} vs {base:<10} " + "  ".join(parts))


def mimi_report(d: Path) -> None:
    g = common.load_npz(d / "golden.npz")
    print(f"Mimi {d.name}: {g['codes_8'].shape[-1]} frames")
    for k in (8, 32):
        parts = []
        if f"mlx_codes_{k}" in g:
            parts.append(f"moshi_mlx codes agree {100 * (g[f'mlx_codes_{k}'] == g[f'codes_{k}']).mean():.1f}%, "
                         f"decode max abs diff {np.abs(g[f'mlx_decoded_{k}'] - g[f'decoded_{k}']).max():.2e}")
        if f"rusty_codes_{k}" in g:
            parts.append(f"rustymimi codes agree {100 * (g[f'rusty_codes_{k}'] == g[f'codes_{k}']).mean():.1f}%")
        if parts:
            print(f"  {k:>2} codebooks vs PyTorch: " + "; ".join(parts))
    if "rusty_decoded_8" in g:
        print(f"  rustymimi decode of PyTorch's 8-codebook codes: max abs diff "
              f"{np.abs(g['rusty_decoded_8'] - g['decoded_8']).max():.2e}")
    distinct = [len(np.unique(r)) for r in g["codes_32"][0]]
    print(f"  distinct codes per codebook (32): min {min(distinct)}, max {max(distinct)}")


def stt_report(d: Path) -> None:
    g = common.load_npz(d / "golden.npz")
    cfg = json.loads((d / "config.json").read_text())
    ref = g["torch_fp32.text"]
    print(f"STT {d.name}: {ref.shape[0]} greedy steps ({int(g['prefix_frames'].reshape(-1)[0])} silent prefix, "
          f"{int(g['suffix_frames'].reshape(-1)[0])} silent suffix frames), context {cfg['context']}; "
          "text vs torch_fp32")
    for run in ("torch_bf16", "mlx_fp32", "mlx_bf16"):
        if f"{run}.text" in g:
            t = g[f"{run}.text"]
            print(f"  {run:<12} {100 * (t == ref).mean():5.1f}% agree, first divergence {first_divergence(t, ref)}")
    ctx = cfg["context"]
    if "mlx_fp32.text_logits" in g:
        err = np.abs(g["mlx_fp32.text_logits"] - g["torch_fp32.text_logits"]).max(-1)
        print(f"  mlx_fp32 text logits max abs diff: {err[:ctx].max():.2e} within the context, "
              f"{err[ctx:].max():.2e} past it (moshi_mlx attends to context + 1)")
        e = np.abs(g["mlx_fp32.eot"] - g["torch_fp32.eot"]).max(axis=(1, 2))
        print(f"  mlx_fp32 extra heads max abs diff: {e[:ctx].max():.2e} within the context")
    err = np.abs(g["tf.torch_bf16.text_logits"].astype(np.float32) - g["torch_fp32.text_logits"])
    top1 = (g["tf.torch_bf16.text_logits"].argmax(-1) == ref).mean()
    print(f"  torch_bf16 teacher-forced: text logits max abs diff {err.max():.2e}, top-1 agree {100 * top1:.1f}%, "
          f"extra heads {np.abs(g['tf.torch_bf16.eot'] - g['torch_fp32.eot']).max():.2e}")
    srt = np.sort(g["torch_fp32.text_logits"], axis=-1)
    print(f"  torch_fp32 smallest top-1 margin: {(srt[:, -1] - srt[:, -2]).min():.3f}")


def tts_report(d: Path) -> None:
    g = common.load_npz(d / "golden.npz")
    cfg = json.loads((d / "config.json").read_text())
    print(f"TTS {d.name}: context {cfg['context']}, greedy fp32 TTSModel runs")
    for run in ("distilled", "real_cfg"):
        if f"{run}.text" not in g:
            continue
        words = ", ".join(f"{w}@{s}" for w, s in zip(g[f"{run}.words"], g[f"{run}.word_steps"]))
        sampled = g[f"{run}.sampled_text"]
        srt = np.sort(g[f"{run}.text_logits"], axis=-1)
        asrt = np.sort(g[f"{run}.audio_logits"], axis=-1)
        print(f"  {run:<10} {len(sampled)} steps, end step {int(g[f'{run}.end_step'][0])}, "
              f"{g[f'{run}.pcm'].shape[-1] / common.SAMPLE_RATE:.2f} s; new word sampled at "
              f"{int((sampled == 0).sum())} steps; words {words}")
        print(f"  {'':<10} smallest top-1 margins: text {(srt[:, -1] - srt[:, -2]).min():.3f}, "
              f"audio (steps 16-23) {(asrt[..., -1] - asrt[..., -2]).min():.3f}")
    if "mlx_distilled.text" in g:
        t, m = g["distilled.text"], g["mlx_distilled.text"]
        n = min(len(t), len(m))
        a, b = g["distilled.frames"][16:, 1:], g["mlx_distilled.audio_frames"]
        k = min(len(a), len(b))
        diff = np.nonzero((a[:k] != b[:k]).any(1))[0]
        frames = "never" if diff.size == 0 else f"frames[{int(diff[0]) + 16}]"
        print(f"  moshi_mlx distilled vs PyTorch: fed text first divergence {first_divergence(t[:n], m[:n])}, "
              f"audio frames first divergence {frames}, end step {int(g['mlx_distilled.end_step'][0])} "
              f"vs {int(g['distilled.end_step'][0])} (moshi_mlx attends to context + 1 positions; identical "
              "throughout with a context longer than the run)")


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "fixtures"
    for d in sorted(root.iterdir()):
        if not (d / "golden.npz").exists():
            continue
        if (d / "config.json").exists():
            kind = json.loads((d / "config.json").read_text()).get("model_type")
            {"stt": stt_report, "tts": tts_report}.get(kind, lm_report)(d)
        elif (d / "mimi_config.json").exists():
            mimi_report(d)


if __name__ == "__main__":
    main()
