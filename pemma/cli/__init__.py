"""The pemma-bench command line: one module per command group, each parsing its options, calling the
library and printing; `common` holds the app, the shared options and the error -> exit policy."""

from importlib import import_module

from pemma.cli.common import app, main

# Registration order is the order `pemma-bench --help` lists the commands in.
for _group in ("data", "listing", "run", "predict", "report", "claims", "search", "bench"):
    import_module(f"pemma.cli.{_group}")

__all__ = ["app", "main"]
