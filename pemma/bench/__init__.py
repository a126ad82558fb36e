"""Benchmarks: throughput, data cache, merged inference, parameter counts (measures), and the
harness's overhead, memory options, layout and compile speed (performance)."""
