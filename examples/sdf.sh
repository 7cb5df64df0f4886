#!/usr/bin/env bash
# The Stanford bunny as a signed-distance grid: fit it, then score IoU and Chamfer
# distance and mesh the network's zero level set to PLY.
#
# BUDGET sets the training seconds (CI uses a few); PLOTS=1 adds diagnostic plots.
#
#   OUT=/tmp/demo examples/sdf.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${INTSTREAM_DATA:-$HERE/../../shared/data}
OUT=${OUT:-$(mktemp -d -t intstream-sdf.XXXXXX)}
mkdir -p "$OUT" && cd "$OUT"

intstream ingest "$DATA/meshes/bunny.obj" -o bunny.zarr --resolution ${RES:-48} --overwrite \
  | intstream fit -o bunny.run --steps 300 --width 64 --depth 4 --time-budget ${BUDGET:-30} --log-every 25 --overwrite \
  | intstream export-weights -o bunny.safetensors --overwrite \
  | intstream eval --metrics iou,chamfer --decode bunny.decoded.ply --overwrite ${PLOTS:+--plot plots}
echo "outputs in $OUT" >&2
