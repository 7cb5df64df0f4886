#!/usr/bin/env bash
# A LibriSpeech utterance (8.5 s at 16 kHz) through the pipeline, decoded back to a WAV file.
#
# Audio's default model is a bank of 1-D tile SIRENs (2048 samples a tile, first-layer
# omega0 300 over each tile's local coordinates) with 1 parameter per sample; this demo
# trains it for 1200 steps, so that the cosine schedule runs its course:
# SNR 18.1 dB by eval with 158 KB of int8 weights, in 23 s in all on 2 idle CPU cores (18 s of training).
# SNR, not PSNR, is audio's headline figure (a flat line at the mean scores ~0 dB SNR).
#
# STEPS sets the training steps, BUDGET caps the training seconds (CI uses a few);
# PLOTS=1 adds the waveform/spectrogram plot.
#
#   OUT=/tmp/demo examples/audio.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${INTSTREAM_DATA:-$HERE/../../shared/data}
OUT=${OUT:-$(mktemp -d -t intstream-audio.XXXXXX)}
mkdir -p "$OUT" && cd "$OUT"

intstream ingest "$DATA/librispeech/00.flac" -o speech.zarr --overwrite \
  | intstream fit -o speech.run --steps ${STEPS:-1200} ${BUDGET:+--time-budget $BUDGET} --log-every 100 --overwrite \
  | intstream export-weights -o speech.safetensors --dtype int8 --overwrite \
  | intstream eval --decode speech.decoded.wav --overwrite ${PLOTS:+--plot plots} \
  | tee eval.json
python3 - "$OUT" "$DATA/librispeech/00.flac" <<'PY' >&2
import json, os, sys
import soundfile as sf
out, src = sys.argv[1], sys.argv[2]
m = json.load(open(os.path.join(out, "eval.json")))
seconds = sf.info(src).duration
print(f"SNR {m['metrics']['snr']:.1f} dB: {m['bytes']:,} bytes of int8 weights = {8 * m['bytes'] / seconds / 1000:.0f} kbit/s "
      f"(the source FLAC has {os.path.getsize(src):,} bytes)")
print(f"listen to {m['decoded']} beside {src}" + (f", plots in {out}/plots" if m.get("plots") else ""))
PY
