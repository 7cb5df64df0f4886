#!/usr/bin/env bash
# A Kodak photo through the whole pipeline: ingest -> fit (INT) -> int8 weights -> eval.
#
# The default model (--model auto: a bank of tile SIRENs for a photo this size) trained
# for 700 steps, so that the cosine learning-rate schedule runs its whole course: 33.7 dB,
# SSIM 0.957 by eval, 265 KB of int8 weights, in ~70 s on 2 CPU cores (the default T of
# 10000 steps gives more; --time-budget without --steps fits the schedule to the budget).
# Every stage prints one JSON line; each reads the previous one from stdin.
#
# STEPS sets the training steps, BUDGET caps the training seconds (CI uses a few);
# PLOTS=1 adds diagnostic plots.
#
#   OUT=/tmp/demo examples/image.sh      (default OUT: a fresh temporary folder)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${INTSTREAM_DATA:-$HERE/../../shared/data}
OUT=${OUT:-$(mktemp -d -t intstream-image.XXXXXX)}
mkdir -p "$OUT" && cd "$OUT"

intstream ingest "$DATA/kodak/kodim05.png" -o kodim05.zarr --overwrite \
  | intstream fit -o kodim05.run --steps ${STEPS:-700} ${BUDGET:+--time-budget $BUDGET} --log-every 50 --overwrite \
  | intstream export-weights -o kodim05.safetensors --dtype int8 --overwrite \
  | intstream eval --decode kodim05.decoded.png --overwrite ${PLOTS:+--plot plots} \
  | tee eval.json
python3 - "$OUT" "$DATA/kodak/kodim05.png" <<'PY' >&2
import json, os, sys
out, src = sys.argv[1], sys.argv[2]
m = json.load(open(os.path.join(out, "eval.json")))
metrics = m["metrics"]
print(f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}: {m['bytes']:,} bytes of int8 weights "
      f"({m['bits_per_sample']:.2f} bits per pixel; the source PNG has {os.path.getsize(src):,} bytes)")
print(f"look at {m['decoded']} beside {src}" + (f", plots in {out}/plots" if m.get("plots") else ""))
PY
