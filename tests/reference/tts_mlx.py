"""moshi_mlx reference side of the TTS fixture (moshi_mlx==0.3.0 on mlx 0.26), after tts_torch.py:
    python tts_mlx.py DIR
Runs moshi_mlx's own TTS path (moshi_mlx.models.tts.TTSModel, as its run_tts.py drives it: the PyTorch file
through Lm.load_pytorch_weights, here in fp32 and greedy) on the distilled model and merges DIR/torch_golden.npz
with `mlx_distilled.*` (tokens, frames, end step; no audio) into DIR/golden.npz. For reports, not an oracle.

Real CFG is not run: moshi_mlx 0.3.0 does not implement what TTSModel.generate does for it (its LmGen has no
cfg_is_no_text, left as a TODO: both halves get the text token, and the text logits are guided too).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import mlx.core as mx
import numpy as np
import sentencepiece

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from mlx_side import merge_goldens, mlx_mimi_config  # noqa: E402

try:  # moshi_mlx.models.tts imports sphn (audio files) at module level; only get_prefix and run_tts use it.
    import sphn  # noqa: F401
except ImportError:
    sys.modules["sphn"] = types.ModuleType("sphn")

from moshi_mlx import models  # noqa: E402
from moshi_mlx.models.tts import TTSModel  # noqa: E402

VOICE_NAME = "tiny_voice.wav"  # as in tts_torch.py


def distilled_run(d: Path, cfg: dict, script: str, cfg_value: float) -> dict[str, np.ndarray]:
    model = models.Lm(models.LmConfig.from_config_dict(cfg))
    model.load_pytorch_weights(str(d / cfg["moshi_name"]), model.cfg, strict=True)
    model.set_dtype(mx.float32)
    mimi = models.mimi.Mimi(mlx_mimi_config(json.loads((d / "mimi_config.json").read_text()), cfg["n_q"]))
    mimi.load_pytorch_weights(str(d / cfg["mimi_name"]), strict=True)  # TTSModel wants one (frame rate)
    tokenizer = sentencepiece.SentencePieceProcessor(str(d / cfg["tokenizer_name"]))
    # run_tts.py's defaults; a distilled model: cfg_coef 1, the coefficient goes in as the `cfg` LUT value.
    tts = TTSModel(model, mimi, tokenizer, temp=0.0, cfg_coef=1.0, n_q=cfg["n_q"], max_gen_length=400,
                   max_padding=8, initial_padding=2, final_padding=4, padding_bonus=0.0, raw_config=cfg)
    assert tts.valid_cfg_conditionings
    entries = tts.prepare_script([script], padding_between=1)
    attributes = tts.make_condition_attributes([tts.get_voice_path(str(d / VOICE_NAME))], cfg_value)
    result = tts.generate([entries], [attributes], cfg_is_no_prefix=False, cfg_is_no_text=False)
    frames = [np.array(f)[0, :, 0] for f in result.frames]  # moshi_mlx keeps complete frames only
    end_step = result.end_steps[0]
    logged = result.logged_text_tokens[0]
    return {
        "sampled_text": np.array([int(np.array(s).reshape(-1)[0]) for s, _ in logged], np.int32),
        "text": np.array([int(t) for _, t in logged], np.int32),
        "audio_frames": np.stack(frames).astype(np.int32),
        "end_step": np.array([end_step], np.int32),
        "consumption_times": np.array(result.all_consumption_times[0], np.int32),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path)
    d = p.parse_args().dir
    cfg = json.loads((d / "config.json").read_text())
    torch_golden = common.load_npz(d / "torch_golden.npz")
    script = str(torch_golden["script"].reshape(-1)[0])
    run = distilled_run(d, cfg, script, cfg_value=2.0)
    merge_goldens(d, {f"mlx_distilled.{k}": v for k, v in run.items()})


if __name__ == "__main__":
    main()
