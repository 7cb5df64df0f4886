#!/usr/bin/env bash
# A Kodak photo through the whole pipeline: ingest -> fit (INT) -> int8 weights -> eval.
#
# The default model (--model auto: a bank of tile SIRENs for a photo this size) for a
# 60 s training budget: 22.5 dB, SSIM 0.64 on 2 CPU cores; raise --time-budget for more.
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
  | intstream fit -o kodim05.run --time-budget ${BUDGET:-60} --log-every 50 --overwrite \
  | intstream export-weights -o kodim05.safetensors --dtype int8 --overwrite \
  | intstream eval --decode kodim05.decoded.png --overwrite ${PLOTS:+--plot plots}
echo "outputs in $OUT" >&2
