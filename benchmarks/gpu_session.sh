#!/usr/bin/env bash
# The GPU checks in one call on a lent GPU machine, from the source, inside a time budget.
#
#   here, first:   bash benchmarks/gpu_kit.sh      # .whl/: the wheels the GPU image lacks
#   device tool:   run(command="BUDGET=460 PERF_S=200 bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=520)
#   issue 45:      run(command="BUDGET=550 PACK_S=140 PERF_S=400 PERF_OPTIONS=compile,liger
#                  bash benchmarks/gpu_session.sh pack perf", carry=[".whl"], timeout_s=590): packing, then MFU
#                  with compile and with Liger's kernels
#   rehearsal:     PYTHON=/path/to/a/python/like/the/image bash benchmarks/gpu_session.sh --cpu
# BUDGET must stay under the call's timeout_s, so the script ends each phase itself and its files come back.
# 15 device-minutes a session, a machine's start included, hold one such call and perhaps a short second one.
#
# Phases (default: check, tests, trace, perf; they run as below, whatever order they are named in):
#   check   benchmarks/gpu_check.py: predicted vs measured peak memory and MFU per method, two cells at once, and
#           the estimate (no GPU) beside each cell probe's prediction (RoBERTa, LLaMA and T5 shapes)
#   tests   the test suite on the GPU (the tests take their expectations from the device). It runs beside check
#           and trace, on the machine's other cores: what those two measure on the GPU (each process's own
#           allocator peaks) is not shared between processes; their step times are, and are not what they check
#   trace   benchmarks/gpu_memory_trace.py: the allocator's history of the cells check predicted worst (CUDA only)
#   pack    benchmarks/gpu_packing.py: cells/hour packed by predicted memory vs one cell per GPU at a time, and each
#           packed cell's reserved peak / budget. It times whole cells, so it runs alone, after the tests; PACK_S
#           seconds of the budget (default 150) are kept for it
#   perf    benchmarks/gpu_perf.py: MFU and the harness against a plain loop, plus a row per speed option of
#           PERF_OPTIONS (compile, liger: harness cells only). It times steps, so it runs last and alone; PERF_S
#           seconds of the budget (default 180) are kept for it
# Each phase is stopped when its share of the budget (BUDGET seconds, default 450) runs out. Into $OUT (the device
# tool's folder that comes back, 8 files at most; a temporary folder elsewhere): env.txt, a log per phase,
# gpu-DATE.md and gpu-perf-DATE.md (the tables docs/measurements/ holds: commit them with the command), and
# extras.tar (junit.xml, the records of check and perf, the traces). --cpu rehearses the same path on a CPU machine
# (the checks' smoke mode, CUDA hidden).
set -uo pipefail
[ -n "${OUT:-}" ] && OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)  # relative to where it was called from
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET=${BUDGET:-450}
PERF_S=${PERF_S:-180}
PACK_S=${PACK_S:-150}
PERF_OPTIONS=${PERF_OPTIONS:-}  # e.g. compile,liger: gpu_perf.py's --options
WORKERS=${WORKERS:-8}  # pytest-xdist processes (the device machine has 16 cores)
PYTHON=${PYTHON:-python3}
DEVICE=cuda
PHASES=()
for arg in "$@"; do
  case "$arg" in
    --cpu) DEVICE=cpu ;;
    check|tests|trace|pack|perf) PHASES+=("$arg") ;;
    *) echo "gpu_session: unknown argument '$arg' (phases: check, tests, trace, pack, perf; option: --cpu)" >&2
       exit 2 ;;
  esac
done
[ ${#PHASES[@]} -gt 0 ] || PHASES=(check tests trace perf)
want() { [[ " ${PHASES[*]} " == *" $1 "* ]]; }
OUT=${OUT:-$(mktemp -d -t peft-bench-gpu-session-XXXX)}
DAY=$(date +%Y-%m-%d)
export PYTHONUNBUFFERED=1 CI=true
[ "$DEVICE" = cpu ] && export CUDA_VISIBLE_DEVICES=""

# The kit's wheels go first on the path, so a carried version wins over the image's.
KIT=${KIT-.whl}  # the wheels benchmarks/gpu_kit.sh wrote (KIT= : none)
WORK=$(mktemp -d -t peft-bench-gpu-work-XXXX)  # the kit's site, checkpoints, records, rc files
trap 'rm -rf "$WORK"' EXIT
if [ -n "$KIT" ] && ls "$KIT"/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "$KIT"/*.whl || { echo "gpu_session: the wheels in $KIT did not install" >&2; exit 1; }
fi
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

stamp() { echo "== $(date -u +%H:%M:%S) +$(( SECONDS - START )) s: $*"; }
share() {  # seconds a phase may take: what is left, less the reserves of pack and perf, which run after it
  local left=$(( BUDGET - (SECONDS - START) ))
  if [ "$1" != perf ] && want perf; then left=$(( left - PERF_S )); fi
  if [ "$1" != perf ] && [ "$1" != pack ] && want pack; then left=$(( left - PACK_S )); fi
  echo "$left"
}

{
  stamp "environment ($DEVICE)"
  # The device tool's copy of .git can lag the tree it sends: the digest of the sources names what ran (here:
  # the same command on a commit's checkout gives the same digest).
  git log -1 --format='commit (as .git says) %H %s' 2>/dev/null || echo "commit: unknown (no git)"
  echo "source digest $(find bench benchmarks tests suites -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.sh' \
    -o -name '*.json' \) -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null \
    || echo "nvidia-smi: none"
  "$PYTHON" - <<'EOF'
import importlib.metadata as md, os, sys
print("python", sys.version.split()[0], "cores", len(os.sched_getaffinity(0)))
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

run_phase() {  # name, then the command: stopped when its share of the budget runs out; its exit code in WORK
  local name=$1; shift
  local budget; budget=$(share "$name")
  if [ "$budget" -lt 30 ]; then
    stamp "$name: skipped, ${budget} s of its share of the budget left" | tee -a "$OUT/env.txt"
    echo 1 >"$WORK/$name.rc"; return
  fi
  stamp "$name (up to $budget s): $*" >"$OUT/$name.log"
  timeout --kill-after=10 "$budget" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$rc" >"$WORK/$name.rc"
  stamp "$name ended: exit $rc$([ "$rc" -eq 124 ] && echo ' (out of budget)')" | tee -a "$OUT/$name.log" "$OUT/env.txt"
}
show() { [ -f "$OUT/$1.log" ] && tail -n "$2" "$OUT/$1.log"; }

if want tests; then  # in the background, beside check and trace (see above); -v: a stopped run still says what ran
  hung=(); "$PYTHON" -c "import pytest_timeout" 2>/dev/null && hung=(--timeout 300)  # one hung test
  run_phase tests "$PYTHON" -m pytest -p no:cacheprovider -v -rfEs --tb=short -n "$WORKERS" \
    ${hung[@]+"${hung[@]}"} --junitxml "$WORK/junit.xml" &
  TESTS=$!
fi
if want check; then
  run_phase check "$PYTHON" benchmarks/gpu_check.py --device "$DEVICE" --jobs 2 --workdir "$WORK/check" \
    --out "$OUT/gpu-$DAY.md"
  show check 40
fi
if want trace; then
  if [ "$DEVICE" = cuda ] && [ -d "$WORK/check/results" ]; then
    run_phase trace "$PYTHON" benchmarks/gpu_memory_trace.py --work "$WORK/check" --out "$WORK/traces.tar"
    show trace 60
  else
    stamp "trace: skipped (it needs CUDA and check's records)" | tee -a "$OUT/env.txt"
  fi
fi
if [ -n "${TESTS:-}" ]; then
  wait "$TESTS"
  show tests 25
fi
if want pack; then
  run_phase pack "$PYTHON" benchmarks/gpu_packing.py --device "$DEVICE" --workdir "$WORK/pack" \
    --out "$OUT/gpu-packing-$DAY.md"
  show pack 30
fi
if want perf; then
  run_phase perf "$PYTHON" benchmarks/gpu_perf.py --device "$DEVICE" --workdir "$WORK/perf" \
    ${PERF_OPTIONS:+--options "$PERF_OPTIONS"} --out "$OUT/gpu-perf-$DAY.md"
  show perf 12
fi

# One file for the rest (the tool brings back 8): junit.xml, the records (no checkpoints) and the traces.
(cd "$WORK" && tar -cf "$OUT/extras.tar" $(ls -d junit.xml traces.tar check/results perf/results pack/results-* \
  2>/dev/null))
status=0
for phase in "${PHASES[@]}"; do
  [ -f "$WORK/$phase.rc" ] && [ "$(cat "$WORK/$phase.rc")" = 0 ] && continue
  [ "$phase" = trace ] && [ "$DEVICE" = cpu ] && continue
  status=1
done
stamp "done: exit $status; files in $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$OUT/env.txt"
exit $status
