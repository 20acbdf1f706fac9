"""`estimate` against the predictions a GPU cell's own probe recorded, with no GPU: the rows of a committed gpu_check
table (docs/measurements/gpu-*.md: a RoBERTa-base-shaped encoder, fp32 weights under bf16 autocast, batch 32 x 256;
a 0.95B LLaMA-shaped decoder, bf16 weights, batch 8 x 256).

    PYTHONPATH=. python benchmarks/estimate_vs_gpu.py [docs/measurements/gpu-2026-11-30.md]
    PYTHONPATH=. python benchmarks/estimate_vs_gpu.py --smoke      # its head-only encoder row (tests)

Per cell: the estimate (the GPU's step: bench/tools/cuda_step.py), the same in fp32 on the CPU's kernels (what it
was before the GPU's step was modelled), the probe's prediction and the allocator's measured peak from the table, in
MiB, and the estimate over each. tests/test_cuda_step.py checks three of the encoder's rows.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from benchmarks.gpu_check import LLAMA_095B  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| gpu-check-(encoder|decoder) \| (\w+) \| ([\w-]+) \| ok \| (\d+) \| (\d+) \|", re.M)
SHAPES = {"encoder": (32, 256), "decoder": (8, 256)}  # gpu_check's batches


def decoder_config(folder: Path) -> str:
    """gpu_check's decoder as a config folder (its tokenizer's special ids do not change the step)."""
    import transformers as tf

    tf.LlamaConfig(**LLAMA_095B).save_pretrained(folder)
    return str(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", nargs="?", default=str(REPO / "docs" / "measurements" / "gpu-2026-11-30.md"))
    parser.add_argument("--smoke", action="store_true", help="the head-only encoder row only (the quickest)")
    args = parser.parse_args()
    rows = [row for row in ROW.findall(Path(args.table).read_text())
            if not args.smoke or row[:3] == ("encoder", "fp32", "head-only")]
    if not rows:
        print(f"{args.table}: no gpu-check rows", file=sys.stderr)
        return 2
    from bench.cell.measure import training_peak
    from bench.errors import BadInput
    from bench.tools.estimate import estimate, prepare_to_count

    prepare_to_count(["roberta", "llama"])
    print("| model | weights | method | estimate MiB | as before (fp32, CPU kernels) | GPU probe MiB | measured MiB "
          "| / probe | / measured |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        models = {"encoder": "roberta-base", "decoder": decoder_config(Path(folder))}
        for kind, weights, method, probed, measured in rows:
            def peak(**how) -> tuple[float, str]:
                """(the predicted peak in MiB, " (upper bound)" where it is one: a Fisher-masked method's)."""
                dtype = "bf16" if weights == "uint8" else weights  # the table names QLoRA's 4-bit container's
                memory = estimate(models[kind], method, *SHAPES[kind], dtype=dtype, **how)["memory"]
                # training's phase: the H200 rows measured training's window
                return training_peak(memory) / 2**20, " (upper bound)" if memory.get("upper_bound") else ""

            try:
                (now, upper), (before, _) = peak(), peak(precision="fp32", step_device="cpu")
            except BadInput as e:  # a method the estimate cannot build without weights
                print(f"| {kind} | {weights} | {method} | – ({e.message.splitlines()[0][:80]}) | | {probed} "
                      f"| {measured} | | |")
                continue
            print(f"| {kind} | {weights} | {method} | {now:.0f} | {before:.0f} | {probed} | {measured} "
                  f"| {now / int(probed):.4f}{upper} | {now / int(measured):.3f}{upper} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
