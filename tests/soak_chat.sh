#!/usr/bin/env bash
# Soak test (not in CI): moshi-mlx-chat on the virtual sound card for MINUTES (default 30) with a tiny
# random model, speech-like audio injected into the microphone in a loop, recording the conversation to
# disk (--record); the chat appends its statistics every 10 s to a CSV; the summary compares the first and
# last minutes (memory must stay flat, step time must not grow). To keep the shared card free for other
# tests, run it on a card of its own: AUDIO_RUNTIME_DIR=/tmp/audio-ci-soak AUDIO_CLIENT_CONF=/tmp/x.conf
# PULSE_SERVER=unix:/tmp/audio-ci-soak/pulse/native bash tests/soak_chat.sh
#   bash tests/soak_chat.sh [MINUTES] [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-30}
out=${2:-$root/bench-out/soak}
CARD=${AUDIO_CI_CARD:-$root/../shared/audio-ci/virtual_soundcard.sh}
mkdir -p "$out"
cd "$root"
bash "$CARD" start >/dev/null
.venv/bin/python - "$out" <<'PY'
import sys, pathlib
sys.path.insert(0, "tests")
import numpy as np
from tiny_model import build_tiny_checkpoint
from moshi_mlx.audio import write_wav
out = pathlib.Path(sys.argv[1])
if not (out / "model" / "model.safetensors").exists():
    build_tiny_checkpoint(out / "model")
t = np.arange(24000 * 20) / 24000
f = 150 + 100 * np.sin(2 * np.pi * 0.7 * t)
x = 0.4 * np.sin(2 * np.pi * np.cumsum(f) / 24000) * (0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t))
write_wav(out / "speech.wav", x, 24000)
PY
rm -rf "$out/stats.csv" "$out/rec"
# The feeder loops while its flag file exists; the trap removes it and ends the player it may be waiting on
# (a signal alone can leave the loop running, still talking into the microphone of later tests).
touch "$out/feeding"
( while [ -e "$out/feeding" ]; do paplay -d mic_inject "$out/speech.wav"; sleep 1; done ) &
feeder=$!
stop_feeder() { rm -f "$out/feeding"; pkill -P "$feeder" 2>/dev/null || true; kill "$feeder" 2>/dev/null || true; }
trap stop_feeder EXIT
.venv/bin/python -m app.chat --model "$out/model" --quiet --seed 1 --silence-timeout 0 \
  --duration "$((minutes * 60))" --stats-log "$out/stats.csv" --record "$out/rec" > "$out/chat.out" 2> "$out/chat.err"
stop_feeder
tail -n 2 "$out/chat.err"
ls -l "$out"/rec/*.wav
.venv/bin/python - "$out/stats.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def window(rs):
    return (sum(float(r["rss_mb"]) for r in rs) / len(rs), sum(float(r["step_ms_recent"]) for r in rs) / len(rs))
# Attention cost grows until the LM's KV window (3000 steps = 4 min) is full: compare from then on.
full = [r for r in rows if float(r["elapsed_s"]) >= 300] or rows
first, last = full[:6], full[-6:]
(rss0, ms0), (rss1, ms1) = window(first), window(last)
print(f"{len(rows)} samples over {float(rows[-1]['elapsed_s']) / 60:.1f} min")
print(f"first minute with the KV window full (t={first[0]['elapsed_s']} s): rss {rss0:.1f} MB, step {ms0:.1f} ms; "
      f"last minute: rss {rss1:.1f} MB, step {ms1:.1f} ms")
print(f"rss growth {rss1 - rss0:+.1f} MB, step time change {ms1 - ms0:+.1f} ms; "
      f"skipped {rows[-1]['skipped']}, xruns {rows[-1]['xruns']}, underruns {rows[-1]['speaker_underruns']}")
PY
