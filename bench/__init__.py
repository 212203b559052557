"""Benchmarks: `make bench` (bench.run) and the load test without loss (bench.load)."""
