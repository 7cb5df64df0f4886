#!/usr/bin/env bash
# A LibriSpeech utterance through the pipeline, decoded back to a WAV file.
#
# Audio uses the paper's input scaling (linspace(-5, 5) per 2 s) and lr 1e-4; this
# demo trains a small SIREN for a few hundred steps (< 1 min on a CPU).
#
# BUDGET sets the training seconds (CI uses a few); PLOTS=1 adds diagnostic plots.
#
#   OUT=/tmp/demo examples/audio.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${INTSTREAM_DATA:-$HERE/../../shared/data}
OUT=${OUT:-$(mktemp -d -t intstream-audio.XXXXXX)}
mkdir -p "$OUT" && cd "$OUT"

intstream ingest "$DATA/librispeech/00.flac" -o speech.zarr --overwrite \
  | intstream fit -o speech.run --steps 300 --width 64 --depth 4 --time-budget ${BUDGET:-30} --log-every 25 --overwrite \
  | intstream export-weights -o speech.safetensors --overwrite \
  | intstream eval --decode speech.decoded.wav --overwrite ${PLOTS:+--plot plots}
echo "outputs in $OUT" >&2
