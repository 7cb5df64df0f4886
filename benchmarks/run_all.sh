#!/usr/bin/env bash
# Every full CPU benchmark, one after the other (hours on 2 cores; see benchmarks/README.md).
#
#   bash benchmarks/run_all.sh                  # generated signals go to the system temp folder
#   BENCH_TMP=/big/disk bash benchmarks/run_all.sh   # ~6 GB free needed there
#
# Each script writes benchmarks/results/<name>.md (and .json/.png where it makes them);
# the console log of the whole run goes to benchmarks/results/run_all.log.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PATH="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')"):$PATH"
export PYTHONUNBUFFERED=1
tmp=()
[[ -n "${BENCH_TMP:-}" ]] && tmp=(--tmp "$BENCH_TMP")
mkdir -p benchmarks/results
log=benchmarks/results/run_all.log
: >"$log"

failed=()
# A failing benchmark (e.g. bench_ingest over its memory budget exits 1 after writing its
# table) must not stop the ones after it; the run's exit status reports it at the end.
step() {
    echo "== $* ($(date '+%H:%M:%S'))" | tee -a "$log" >&2
    local t0=$SECONDS
    if ! "$PYTHON" "$@" 2>&1 | tee -a "$log"; then
        failed+=("$1")
    fi
    echo "== done in $((SECONDS - t0)) s" | tee -a "$log" >&2
}

step benchmarks/bench_ingest.py "${tmp[@]}"
step benchmarks/bench_sdf_ingest.py
step benchmarks/bench_teachers.py --images 1 2 3 4 5 6 7 8 9 10 11 12
step benchmarks/bench_teachers.py --out-of-core
step benchmarks/bench_teachers.py --mosaic 2048 --time-budget 300 --chunk 256 "${tmp[@]}"
step benchmarks/bench_audio.py
step benchmarks/bench_long_audio.py
step benchmarks/bench_modalities.py
step benchmarks/bench_scoring.py
step benchmarks/bench_outofcore.py "${tmp[@]}"

echo "results in $(pwd)/benchmarks/results (log: $log):" >&2
ls -1 benchmarks/results >&2
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
