#!/usr/bin/env bash
# The smoke suite twice, on this machine (--jobs 2) and as Slurm jobs on the cluster SLURM_CONF names (one CPU a
# cell, two at once: the same threads per cell), then `peft-bench compare` of the two stores: every exact figure
# and score must be equal (exit 1 otherwise). Prints each run's wall time. Needs `make install` and a cluster
# (scripts/slurm/up.sh); `make slurm-test` runs it after the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${SLURM_CONF:?start a cluster with scripts/slurm/up.sh and export the SLURM_CONF it prints}"
BIN=${BIN:-.venv/bin}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

began=$SECONDS
"$BIN/peft-bench" run --suite smoke --jobs 2 --results "$WORK/local" --quiet
local_s=$(( SECONDS - began ))
began=$SECONDS
"$BIN/peft-bench" run --suite smoke --executor slurm --cpus-per-cell 1 --results "$WORK/slurm" --quiet
slurm_s=$(( SECONDS - began ))

"$BIN/peft-bench" compare "$WORK/local" "$WORK/slurm" --suite smoke --json > "$WORK/compare.json"
"$BIN/python" - "$WORK/compare.json" "$local_s" "$slurm_s" <<'PY'
import json
import sys

result, local_s, slurm_s = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
exact = [c for cell in result["cells"] for c in cell["changes"] if c["rule"] in ("exact", "versioned", "score")]
print(f"smoke suite: {len(result['cells'])} cells in both stores, {len(result['only_a'])} only local, "
      f"{len(result['only_b'])} only on Slurm; local (--jobs 2) {local_s} s, Slurm (2 jobs at once) {slurm_s} s")
print(f"exact, versioned and score figures compared: {len(exact)}; flagged: {result['flagged']}; "
      f"machine-dependent warnings: {result['warnings']}")
sys.exit(1 if result["flagged"] or result["only_a"] or result["only_b"] or not result["cells"] else 0)
PY
