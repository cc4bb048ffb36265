#!/usr/bin/env bash
# Builds the two isolated reference environments (never our venv):
#   $REF/torch: torch==2.13.0 (CPU wheel) + moshi==0.2.13 --no-deps + the small deps it imports
#   $REF/mlx:   mlx[cpu]==0.26.5 (Linux) / mlx==0.26.5 (macOS) + moshi_mlx==0.3.0 --no-deps + rustymimi
# (Checked from / so that our own moshi_mlx package in the checkout cannot shadow Kyutai's.)
# Idempotent: an environment that imports is left alone. REF defaults to <repo>/.ref (gitignored).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REF=${MOSHI_REF_DIR:-$(cd "$here/../.." && pwd)/.ref}
PY=${PYTHON:-python3}
mkdir -p "$REF"

if ! (cd / && "$REF/torch/bin/python" -c "import torch, moshi.models.lm, safetensors") 2>/dev/null; then
  echo "building $REF/torch (moshi 0.2.13 on torch 2.13.0 CPU)"
  rm -rf "$REF/torch"
  "$PY" -m venv "$REF/torch"
  # torch 2.13.0 exactly: its CPU wheel is what these machines carry; any other pulls a CUDA build.
  "$REF/torch/bin/pip" install -q torch==2.13.0 'numpy<2.3' 'safetensors<0.8' 'einops<0.9' \
    'sentencepiece<0.3' 'huggingface-hub<1.0'
  "$REF/torch/bin/pip" install -q --no-deps moshi==0.2.13
fi

if ! (cd / && "$REF/mlx/bin/python" -c "import moshi_mlx.models, mlx.core") 2>/dev/null; then
  echo "building $REF/mlx (moshi_mlx 0.3.0 on mlx 0.26.5)"
  rm -rf "$REF/mlx"
  "$PY" -m venv "$REF/mlx"
  if [ "$(uname -s)" = Darwin ]; then mlx='mlx==0.26.5'; else mlx='mlx[cpu]==0.26.5'; fi
  "$REF/mlx/bin/pip" install -q "$mlx" 'numpy<2.3,>=2.1' 'safetensors<0.6' 'huggingface-hub<0.29' \
    'sentencepiece==0.2'
  # rustymimi ships Linux and macOS wheels; where none fits (it would need Rust) we go on without it.
  "$REF/mlx/bin/pip" install -q --only-binary=:all: rustymimi==0.4.1 || echo "no rustymimi wheel: skipped"
  "$REF/mlx/bin/pip" install -q --no-deps moshi_mlx==0.3.0
fi
echo "reference environments ready in $REF"
