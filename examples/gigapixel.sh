#!/usr/bin/env bash
# Out of core end to end on a generated gigapixel image (SIZE x SIZE, RGB, 8 bit).
#
# 1. write a tiled BigTIFF one tile at a time (intstream.testing.write_tiled_tiff),
# 2. ingest it into a sharded Zarr store (streamed),
# 3. fit with a memory budget far below the signal: training runs in rounds, Dask
#    scoring chunk groups and merging their top-k (DESIGN §5),
# 4. export int8 weights, 5. eval streams the store chunk by chunk (bounded memory)
#    and decodes a tiled BigTIFF at DECODE_SHAPE.
#
# Scoring every pixel is the slow part on a CPU (~0.1-0.3 M samples/s for a 6 x 256
# SIREN): 1 GP takes hours there and minutes on a GPU (DEVICE=cuda). Shrink SIZE to try
# it quickly, e.g. SIZE=8192.
#
#   SIZE=32768 OUT=/scratch/giga examples/gigapixel.sh
set -euo pipefail
SIZE=${SIZE:-32768}
DEVICE=${DEVICE:-auto}
DECODE_SHAPE=${DECODE_SHAPE:-$((SIZE / 8)),$((SIZE / 8))}
OUT=${OUT:-$(mktemp -d -t intstream-giga.XXXXXX)}
mkdir -p "$OUT" && cd "$OUT"

[ -f giga.tif ] || python -c "
import sys
from intstream.testing import write_tiled_tiff
write_tiled_tiff('giga.tif', ($SIZE, $SIZE), channels=3, tile=(512, 512))
print('wrote giga.tif', file=sys.stderr)
"

intstream ingest giga.tif -o giga.zarr --overwrite \
  | intstream fit -o giga.run --width 256 --depth 6 --memory-budget 512M --time-budget ${BUDGET:-600} \
      --device "$DEVICE" --log-every 100 --resume \
  | intstream export-weights -o giga.safetensors --dtype int8 --overwrite \
  | intstream eval --device "$DEVICE" --decode giga.decoded.tif --shape "$DECODE_SHAPE" --overwrite --plot plots
echo "outputs in $OUT" >&2
