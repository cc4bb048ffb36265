#!/usr/bin/env bash
# The benchmarks on a Linux machine with an NVIDIA GPU: ours vs Kyutai's moshi_mlx 0.3.0 on the same MLX.
#   bash tests/gpu_bench.sh         # 7B-shaped LM (q4, bf16), published-size Mimi, offline chain, engine
#   bash tests/gpu_bench.sh --cpu   # the same steps on mlx[cpu], a mid-size LM for the 7B and few frames:
#                                   # checks this script on any Linux machine in a few minutes
# It builds its own venvs in $GPU_BENCH_DIR (default bench-out/gpu, or bench-out/gpu-cpu): ours with
# mlx[cuda12]==0.32.4 and this checkout, theirs with the same MLX plus moshi_mlx==0.3.0 --no-deps and
# rustymimi (Kyutai pins mlx 0.26, which has no CUDA wheel). Random weights in the published layouts are
# made here, the LM through moshi-mlx-convert as users do. pip is its only network use (HF_HUB_OFFLINE=1).
# Needs python3 >= 3.10 with venv, ~45 GB of disk for the 7B, an NVIDIA driver for CUDA 12. After the
# installs it takes ~7 minutes on an H100/H200; each benchmark has a timeout and a log in $GPU_BENCH_DIR/logs,
# and one summary table ends the output. Nothing in the tests needs this script.
# Environment: PYTHON (python3), GPU_BANDWIDTH_GBS (overrides the table below), GPU_BENCH_BLAS (bundled).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
case "${1:-}" in
  "") mode=gpu ;;
  --cpu) mode=cpu ;;
  *) echo "usage: bash tests/gpu_bench.sh [--cpu]" >&2; exit 2 ;;
esac
W=${GPU_BENCH_DIR:-$root/bench-out/$([ "$mode" = gpu ] && echo gpu || echo gpu-cpu)}
PY=${PYTHON:-python3}
BLAS=${GPU_BENCH_BLAS:-bundled}
export HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$W/logs"

bandwidth_gbs() {  # nominal memory bandwidth (GB/s) of an NVIDIA GPU from its name; empty when unknown
  case "$(echo "$1" | tr '[:upper:]' '[:lower:]')" in
    *gh200*) echo 4000 ;;
    *h200*) echo 4800 ;;
    *h100*pcie*) echo 2000 ;;
    *h100*nvl*) echo 3900 ;;
    *h100*|*h800*) echo 3350 ;;
    *b200*) echo 8000 ;;
    *a100*40gb*) echo 1555 ;;
    *a100*pcie*) echo 1935 ;;
    *a100*) echo 2039 ;;
    *l40*) echo 864 ;;
    *a10g*|*a10) echo 600 ;;
    *l4) echo 300 ;;
    *4090*) echo 1008 ;;
    *3090*) echo 936 ;;
    *v100*) echo 900 ;;
    *t4) echo 320 ;;
  esac
}

if [ "$mode" = gpu ]; then
  if ! command -v nvidia-smi >/dev/null; then
    echo "error: nvidia-smi not found: this needs a Linux machine with an NVIDIA GPU (or run with --cpu)" >&2
    exit 2
  fi
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  bw=${GPU_BANDWIDTH_GBS:-$(bandwidth_gbs "$gpu")}
  mlx_req='mlx[cuda12]==0.32.4'
  lm_size=7b steps=50 warmup=10 mimi_frames=100 offline=(q4 10) engine_frames=60
else
  gpu="none (--cpu: the steps of a GPU run, on the CPU)"
  bw=${GPU_BANDWIDTH_GBS:-}
  mlx_req='mlx[cpu]==0.32.4'
  # MLX's quantized matmuls are slow on a CPU: the offline chain runs the bf16 LM there.
  lm_size=mid steps=5 warmup=3 mimi_frames=8 offline=(bf16 1) engine_frames=12
fi
echo "GPU: $gpu; nominal bandwidth ${bw:-unknown (set GPU_BANDWIDTH_GBS)} GB/s; work folder $W"

# ------------------------------------------------------------------------------------------ venvs
OURS=$W/venv-ours THEIRS=$W/venv-theirs
if ! (cd / && "$OURS/bin/python" -c "import mlx.core, sentencepiece, huggingface_hub, rich, moshi_mlx.engine") \
    2>/dev/null; then
  echo "building $OURS ($mlx_req + this checkout)"
  rm -rf "$OURS"
  "$PY" -m venv "$OURS" || { echo "error: '$PY -m venv' failed: apt-get install python3-venv" >&2; exit 2; }
  "$OURS/bin/pip" install -q "$mlx_req" numpy sentencepiece huggingface-hub rich
  # --no-deps: the package's own requirement (mlx[cpu] on Linux) would install a second MLX.
  "$OURS/bin/pip" install -q --no-deps -e .
fi
if ! (cd / && "$THEIRS/bin/python" -c "import moshi_mlx.models, mlx.core, rustymimi") 2>/dev/null; then
  echo "building $THEIRS ($mlx_req + moshi_mlx==0.3.0 --no-deps + rustymimi)"
  rm -rf "$THEIRS"
  "$PY" -m venv "$THEIRS"
  "$THEIRS/bin/pip" install -q "$mlx_req" 'numpy<2.3,>=2.1' 'safetensors<0.6' 'huggingface-hub<0.29' \
    'sentencepiece==0.2'
  "$THEIRS/bin/pip" install -q --only-binary=:all: rustymimi==0.4.1
  "$THEIRS/bin/pip" install -q --no-deps moshi_mlx==0.3.0
fi
echo "Kyutai's moshi_mlx 0.3.0 pins mlx 0.26, which has no CUDA wheel: both sides run on $mlx_req here."
for side in ours theirs; do
  (cd / && "$W/venv-$side/bin/python" -c \
    "import mlx.core as mx; print('  $side: mlx', mx.__version__, 'GPU' if mx.is_available(mx.gpu) else 'CPU only')")
done
if [ "$mode" = gpu ] && ! "$OURS/bin/python" -c "import mlx.core as mx; assert mx.is_available(mx.gpu)"; then
  echo "error: MLX sees no GPU: check the NVIDIA driver (CUDA 12) with nvidia-smi" >&2
  exit 2
fi

# ------------------------------------------------------------------------------------------ weights
SECONDS=0
MIMI=$W/mimi/tokenizer-e351c8d8-checkpoint125.safetensors
if [ ! -f "$MIMI" ]; then
  echo "writing a random published-size Mimi to $MIMI"
  mkdir -p "$W/mimi"
  "$OURS/bin/python" -c "import sys; from pathlib import Path; from app.bench_mimi import write_random_checkpoint
write_random_checkpoint(Path(sys.argv[1]), seed=0)" "$MIMI.partial.safetensors"
  mv "$MIMI.partial.safetensors" "$MIMI"
fi
LM=$W/converted-$lm_size
if [ ! -f "$LM/q4/model.q4.safetensors" ] || [ ! -f "$LM/bf16/model.safetensors" ]; then
  echo "writing a random $lm_size LM in Kyutai's PyTorch layout, then moshi-mlx-convert to q4 and bf16"
  "$OURS/bin/python" - "$LM/src" "$lm_size" <<'EOF'
import json
import sys
from pathlib import Path

from app.bench_lm import CONFIGS
from convert.measure import write_random_checkpoint
from moshi_mlx.lm.config import LmConfig

src, size = Path(sys.argv[1]), sys.argv[2]
src.mkdir(parents=True, exist_ok=True)
if size == "7b":
    config = LmConfig.preset("moshi_7b")  # the converter's default too: no config.json needed
else:
    (src / "config.json").write_text(json.dumps(CONFIGS[size]))
    config = LmConfig.from_dict(CONFIGS[size])
if not (src / "model.safetensors").exists():
    write_random_checkpoint(src / "model.safetensors", config)
EOF
  ln -f "$MIMI" "$LM/src/" 2>/dev/null || cp "$MIMI" "$LM/src/"  # the converter carries it over
  "$OURS/bin/moshi-mlx-convert" "$LM/src" --out "$LM/q4" --quantize q4 --force
  "$OURS/bin/moshi-mlx-convert" "$LM/src" --out "$LM/bf16" --force
  rm -rf "$LM/src"
fi
echo "weights ready in $SECONDS s"

# ------------------------------------------------------------------------------------------ benchmarks
declare -A status
bench() {  # NAME TIMEOUT_S ARGS...: one `moshi-mlx-bench` run, logged; a failure is reported, not fatal
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (timeout ${limit}s)"
  set +e
  timeout "$limit" "$OURS/bin/python" -m app.bench "$@" --blas "$BLAS" --json "$W/$name.json" 2>&1 \
    | tee "$W/logs/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  case $rc in
    0) status[$name]="ok, $((SECONDS - start)) s" ;;
    124) status[$name]="TIMED OUT after ${limit} s"; rm -f "$W/$name.json" ;;
    *) status[$name]="FAILED (exit $rc, see $W/logs/$name.log)"; rm -f "$W/$name.json" ;;
  esac
}
ref=(--ref-python "$THEIRS/bin/python")
for p in q4 bf16; do
  bench "lm_$p" 150 lm --checkpoint "$LM/$p" --precisions "$p" --steps "$steps" --warmup "$warmup" --rounds 1 \
    --only ours,moshi_mlx "${ref[@]}" ${bw:+--bandwidth "$bw"}
done
bench mimi 120 mimi --reference-python "$THEIRS/bin/python" --weights "$MIMI" --frames "$mimi_frames" \
  --only ours moshi_mlx rustymimi
bench offline 150 offline --checkpoint "$LM/${offline[0]}" --seconds "${offline[1]}" --warmup-seconds 0.5 \
  "${ref[@]}"
bench engine 150 engine --out "$W" --frames "$engine_frames"  # mid-size bf16 LM, published-size Mimi
engines=(engine)
if [ "$mode" = gpu ]; then
  bench engine_7b 150 engine --checkpoint "$LM/q4" --frames "$engine_frames"
  engines+=(engine_7b)
fi

# ------------------------------------------------------------------------------------------ summary
echo
"$OURS/bin/python" - "$W" "$gpu" "${bw:-}" "$lm_size" "${engines[@]}" <<'EOF'
import json
import sys
from pathlib import Path

W, gpu, bw, size, engines = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]


def load(name):
    path = W / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


print(f"summary: GPU {gpu}, nominal bandwidth {bw or 'unknown'} GB/s; both sides on the same MLX")
print(f"{'benchmark':38} {'ours':>9} {'moshi_mlx':>9} {'ratio':>6}  notes (ratio = ours / theirs; lower is better)")
for p in ("q4", "bf16"):
    data = load(f"lm_{p}")
    if data is None:
        print(f"{f'LM {size} {p}, ms/step':38} {'failed':>9}")
        continue
    rows = {r["who"]: r for r in data["rows"]}
    ours, theirs = rows["ours"], rows["moshi_mlx"]
    note = f"{ours['weight_gb_per_step']:.2f} GB of weights per step"
    if bw:
        pct = {k: 100 * r["weight_gb_per_step"] / (r["median_ms"] / 1e3) / float(bw) for k, r in rows.items()}
        note += f"; roofline: ours {pct['ours']:.0f}%, theirs {pct['moshi_mlx']:.0f}%"
    print(f"{f'LM {size} {p}, ms/step (median)':38} {ours['median_ms']:9.2f} {theirs['median_ms']:9.2f} "
          f"{ours['median_ms'] / theirs['median_ms']:6.2f}  {note}")
data = load("mimi")
if data is None:
    print(f"{'Mimi enc+dec, ms/frame':38} {'failed':>9}")
else:
    rows = {r["impl"]: r["encode_ms"][0] + r["decode_ms"][0] for r in data["rows"]}
    note = f"rustymimi (CPU) {rows['rustymimi']:.2f}" if "rustymimi" in rows else ""
    print(f"{'Mimi enc+dec, ms/frame (median)':38} {rows['ours']:9.2f} {rows['moshi_mlx']:9.2f} "
          f"{rows['ours'] / rows['moshi_mlx']:6.2f}  {note}")
data = load("offline")
if data is None:
    print(f"{'offline chain, real-time factor':38} {'failed':>9}")
else:
    o, k = data["rows"]["ours"], data["rows"]["kyutai"]
    label = f"offline chain {size} {Path(data['checkpoint']).name}, RTF"
    print(f"{label:38} {o['wall_s'] / o['audio_s']:9.3f} {k['wall_s'] / k['audio_s']:9.3f} "
          f"{o['wall_s'] / k['wall_s']:6.2f}  theirs: rustymimi codec on the CPU, as moshi_mlx.local")
for name in engines:
    data = load(name)
    if data is None:
        print(f"{name + ', frames/s':38} {'failed':>9}")
        continue
    lm = f"{Path(data['checkpoint']).name}/{data['lm']}"
    for row in data["rows"]:
        s, t = row["serial"], row["stream"]
        same = "identical" if row["tokens_identical"] and row["audio_identical"] else "DIFFERENT"
        print(f"{'engine stream, codec ' + row['codec'] + ', frames/s':38} {t['fps']:9.2f} {'':>9} "
              f"{t['fps'] / s['fps']:6.2f}  {lm}: ratio = stream / serial ({s['fps']:.2f} frames/s); "
              f"latency med {t['latency_med_ms']:.0f} vs {s['latency_med_ms']:.0f} ms; {same}")
EOF
echo
for name in lm_q4 lm_bf16 mimi offline "${engines[@]}"; do echo "  $name: ${status[$name]}"; done
echo "benchmarks took $SECONDS s (weights included)"
