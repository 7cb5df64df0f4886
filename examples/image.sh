#!/usr/bin/env bash
# A Kodak photo through the whole pipeline: ingest -> fit (INT) -> int8 weights -> eval.
#
# Small on purpose (a 4 x 32 SIREN, a 30 s training budget) so it runs in under a
# minute on a laptop CPU; raise --steps/--width/--time-budget for real compression.
# Every stage prints one JSON line; each reads the previous one from stdin.
#
# BUDGET sets the training seconds (CI uses a few); PLOTS=1 adds diagnostic plots.
#
#   OUT=/tmp/demo examples/image.sh      (default OUT: a fresh temporary folder)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${INTSTREAM_DATA:-$HERE/../../shared/data}
OUT=${OUT:-$(mktemp -d -t intstream-image.XXXXXX)}
mkdir -p "$OUT" && cd "$OUT"

intstream ingest "$DATA/kodak/kodim05.png" -o kodim05.zarr --overwrite \
  | intstream fit -o kodim05.run --steps 300 --width 32 --depth 4 --time-budget ${BUDGET:-30} --log-every 25 --overwrite \
  | intstream export-weights -o kodim05.safetensors --dtype int8 --overwrite \
  | intstream eval --decode kodim05.decoded.png --overwrite ${PLOTS:+--plot plots}
echo "outputs in $OUT" >&2
