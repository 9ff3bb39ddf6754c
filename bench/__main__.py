"""Run every benchmark module in turn: `python -m bench [NAME ...]` (default: all but the long ones, in this order)."""

from __future__ import annotations

import importlib
import sys

# Each module exposes main(argv: list[str]) -> int.
BENCHMARKS = ["bench.grow", "bench.copy", "bench.load", "bench.train", "bench.scale", "bench.generate", "bench.gpu"]
# Run only when named: plan against simulation at full size takes ~15 minutes on 2 cores.
LONG = ["bench.agree"]


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(f"benchmarks: {', '.join(BENCHMARKS)}; run only when named: {', '.join(LONG)}")
        print("each also runs alone with its own flags: python -m bench.NAME --help")
        return 0
    names = [n if n.startswith("bench.") else f"bench.{n}" for n in argv] or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS) - set(LONG))
    if unknown:
        print(f"unknown benchmark {unknown[0]} (have: {', '.join(BENCHMARKS + LONG)})", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        print(f"== {name}", flush=True)
        status |= importlib.import_module(name).main([])
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
