#!/usr/bin/env bash
# The GPU checks in one call on a lent GPU machine, from the source, inside a time budget.
#
#   here, first:   bash benchmarks/gpu_kit.sh      # .whl/: the wheels the GPU image lacks
#   device tool:   run(command="BUDGET=560 bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
#   rehearsal:     PYTHON=/path/to/a/python/like/the/image bash benchmarks/gpu_session.sh --cpu check tests perf
# BUDGET must stay under the call's timeout_s, so the script ends each phase itself and its files come back.
# With 15 device-minutes a session (a machine's start included), one such call is what fits: perf (issue 16)
# needs a call of its own (BUDGET=360), in a session with that time left or in place of tests.
#
# Phases, in the order given (default: check tests, issue 12):
#   check   benchmarks/gpu_check.py: predicted vs measured peak memory and MFU per method
#   tests   the test suite on the GPU (the tests take their expectations from the device)
#   perf    benchmarks/gpu_perf.py: MFU and the harness against a plain loop
# Each phase is stopped when the budget (BUDGET seconds, default 570) runs out. Everything lands in $OUT
# (the device tool's folder that comes back; a temporary folder elsewhere): env.txt, one log per phase,
# junit.xml, and the tables as docs/measurements/gpu-DATE.md and gpu-perf-DATE.md should hold them (commit
# those with the command). --cpu rehearses the same path on a CPU machine (the checks' smoke mode, CUDA hidden).
set -uo pipefail
[ -n "${OUT:-}" ] && OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)  # relative to where it was called from
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET=${BUDGET:-570}
WORKERS=${WORKERS:-8}  # pytest-xdist processes (the device machine has 16 cores)
PYTHON=${PYTHON:-python3}
DEVICE=cuda
PHASES=()
for arg in "$@"; do
  case "$arg" in
    --cpu) DEVICE=cpu ;;
    check|tests|perf) PHASES+=("$arg") ;;
    *) echo "gpu_session: unknown argument '$arg' (phases: check, tests, perf; option: --cpu)" >&2; exit 2 ;;
  esac
done
[ ${#PHASES[@]} -gt 0 ] || PHASES=(check tests)
OUT=${OUT:-$(mktemp -d -t peft-bench-gpu-session-XXXX)}
DAY=$(date +%Y-%m-%d)
export PYTHONUNBUFFERED=1 CI=true
[ "$DEVICE" = cpu ] && export CUDA_VISIBLE_DEVICES=""

left() { echo $(( BUDGET - (SECONDS - START) )); }
stamp() { echo "== $(date -u +%H:%M:%S) +$(( SECONDS - START )) s: $*"; }

# The kit's wheels go first on the path, so a carried version wins over the image's.
KIT=${KIT-.whl}  # the wheels benchmarks/gpu_kit.sh wrote (KIT= : none)
SITE=$(mktemp -d -t peft-bench-site-XXXX)
trap 'rm -rf "$SITE"' EXIT
if [ -n "$KIT" ] && ls "$KIT"/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$KIT"/*.whl \
    || { echo "gpu_session: the wheels in $KIT did not install" >&2; exit 1; }
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  stamp "environment ($DEVICE)"
  git log -1 --format='commit %H %s' 2>/dev/null || echo "commit: unknown (no git)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: none"
  "$PYTHON" - <<'EOF'
import importlib.metadata as md, sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "peft", "accelerate", "tokenizers", "huggingface-hub", "bitsandbytes",
             "datasets", "nvidia-ml-py", "numpy", "pytest", "pytest-xdist"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
import torch
print("cuda available", torch.cuda.is_available())
EOF
} 2>&1 | tee "$OUT/env.txt"

status=0
run_phase() {  # name, then the command; stopped when the budget runs out
  local name=$1; shift
  local budget; budget=$(left)
  if [ "$budget" -lt 30 ]; then
    stamp "$name: skipped, ${budget} s of the budget left" | tee -a "$OUT/env.txt"; status=1; return
  fi
  stamp "$name (up to $budget s): $*" | tee "$OUT/$name.log"
  timeout --kill-after=10 "$budget" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  stamp "$name ended: exit $rc$([ "$rc" -eq 124 ] && echo ' (out of budget)')" | tee -a "$OUT/$name.log" "$OUT/env.txt"
  [ "$rc" -eq 0 ] || status=1
}

for phase in "${PHASES[@]}"; do
  case "$phase" in
    check) run_phase check "$PYTHON" benchmarks/gpu_check.py --device "$DEVICE" --out "$OUT/gpu-$DAY.md" ;;
    # -v prints each result as it comes, so a run stopped by the budget still says what passed and failed
    tests) hung=(); "$PYTHON" -c "import pytest_timeout" 2>/dev/null && hung=(--timeout 300)  # one hung test
           run_phase tests "$PYTHON" -m pytest -p no:cacheprovider -v -rfEs --tb=short -n "$WORKERS" \
             ${hung[@]+"${hung[@]}"} --junitxml "$OUT/junit.xml" ;;
    perf) run_phase perf "$PYTHON" benchmarks/gpu_perf.py --device "$DEVICE" --out "$OUT/gpu-perf-$DAY.md" ;;
  esac
done
stamp "done: exit $status; files in $OUT" | tee -a "$OUT/env.txt"
exit $status
