#!/usr/bin/env bash
# Regenerates reference checkpoints and goldens, deterministically (same bytes twice).
#   bash tests/reference/regenerate.sh              # committed tiny fixtures (Mimi, LM, STT, TTS) -> tests/fixtures/
#   bash tests/reference/regenerate.sh --full DIR   # published-size Mimi + mid-size LM -> DIR (not committed)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REF=${MOSHI_REF_DIR:-$(cd "$here/../.." && pwd)/.ref}
bash "$here/build_envs.sh"
if [ "${1:-}" = "--full" ]; then
  out=${2:?usage: regenerate.sh --full DIR}
  mimi=(full 25.6)   # 320 frames: longer than the 250-step transformer context
  lm=mid
  names=(mimi_full lm_mid e2e_mid)
else
  out=$here/../fixtures
  mimi=(tiny 5.12)
  lm=tiny
  names=(mimi_tiny lm_tiny stt_tiny tts_tiny)  # stt_tiny and tts_tiny reuse mimi_tiny's weights: after it
fi
mkdir -p "$out"
for name in "${names[@]}"; do
  work="$out/$name.tmp"
  rm -rf "$work"
  mkdir -p "$work"
  case $name in
    mimi_*)
      "$REF/torch/bin/python" "$here/torch_side.py" mimi "$work" --size "${mimi[0]}" --seconds "${mimi[1]}"
      "$REF/mlx/bin/python" "$here/mlx_side.py" mimi "$work" ;;
    lm_*)
      "$REF/torch/bin/python" "$here/torch_side.py" lm "$work" --size "$lm"
      "$REF/mlx/bin/python" "$here/mlx_side.py" lm "$work" ;;
    stt_*)  # Kyutai's streaming STT (dep_q 0, 32 codebooks, extra heads), tiny
      "$REF/torch/bin/python" "$here/stt_torch.py" "$work" --mimi-dir "$out/mimi_tiny"
      "$REF/mlx/bin/python" "$here/stt_mlx.py" "$work" ;;
    tts_*)  # Kyutai's streaming TTS (32 codebooks, cross-attention, conditioners, demuxed text), tiny
      "$REF/torch/bin/python" "$here/tts_torch.py" "$work" --mimi-dir "$out/mimi_tiny"
      "$REF/mlx/bin/python" "$here/tts_mlx.py" "$work" ;;
    e2e_*)  # the published-size Mimi feeding the mid-size LM (both card 2048)
      "$REF/torch/bin/python" "$here/torch_side.py" e2e "$work" --mimi-dir "$out/mimi_full" \
        --lm-dir "$out/lm_mid" ;;
  esac
  # Swap in whole: a half-written fixture folder is never left looking complete.
  rm -rf "$out/$name"
  mv "$work" "$out/$name"
done
python3 "$here/report.py" "$out"
du -sh "$out"/*/ | sed 's/^/size: /'
