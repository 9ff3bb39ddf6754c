"""Run every benchmark module in turn: `python -m bench [NAME ...]` (default: all, in this order)."""

from __future__ import annotations

import importlib
import sys

# Each module exposes main(argv: list[str]) -> int.
BENCHMARKS = ["bench.grow", "bench.copy", "bench.train", "bench.scale", "bench.gpu"]


def main(argv: list[str]) -> int:
    names = [n if n.startswith("bench.") else f"bench.{n}" for n in argv] or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark {unknown[0]} (have: {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        print(f"== {name}", flush=True)
        status |= importlib.import_module(name).main([])
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
