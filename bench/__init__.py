"""Benchmarks: `python -m bench` (or `make bench`) runs them side by side; figures go in docs/benchmarks.md."""
