#!/usr/bin/env bash
# The results table of docs/results.md: trains every method for every seed on the CPU machine,
# evaluates all checkpoints on the offline symmetric benchmark, writes
# out/results_table/{results.json,table.md} (out/ is git-ignored).  Resumable: finished runs are reused.
#   bash scripts/results_table.sh            # the committed table (preset "cpu")
#   bash scripts/results_table.sh smoke      # a one-minute end-to-end check
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The table's numbers come from the pure-PyTorch ops (identical math on every machine).
export SOLAR_BACKEND=${SOLAR_BACKEND:-torch}
exec python3 -m solar.experiments.table --preset "${1:-cpu}" "${@:2}"
