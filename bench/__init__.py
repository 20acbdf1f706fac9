"""peft-bench: compare parameter-efficient fine-tuning methods honestly."""

__version__ = "0.1.0"
