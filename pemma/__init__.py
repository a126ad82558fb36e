"""pemma-bench: a benchmark and ablation harness for parameter-efficient multi-modal adaptation."""

__version__ = "0.1.0"
