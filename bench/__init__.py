"""peft-bench: compare parameter-efficient fine-tuning methods honestly."""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft whenever it is installed) warns on every import, on CPUs with AVX-512 BF16,
# that an optional kernel package is missing. That kernel only speeds up 4-bit matmuls on a CPU, which no
# cell runs (QLoRA needs CUDA), and the warning would open every run's and estimate's output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
