"""Load benchmark: a checkpoint's tensors read into memory with their checksums, against `cat`.

    python -m bench load            # or: python -m bench.load [--mb 1300] [--repeat 5]

A resume reads every byte of a rank's checkpoint files into its tensors and must prove them
unchanged (xxh3 against the checksums recorded at save). `motif train` does both in one pass:
the engines read with `TensorReader`, which hands every chunk to the checkpoint's
`ReadVerifier`, each chunk hashed by the reading thread right after its read. Timed here on the same
files, side by side, the median of `--repeat` runs each:

* `read + verify`: what a resume does (two files, model and optimizer, as the ddp engine reads
  them at W = 1: in file order, cut by bytes into two runs on two threads);
* `read only`: the same reads with no checksum (the floor of the reading itself);
* `cat` of the same files to /dev/null (the target's floor: load <= 1.3x cat).

On a warm page cache (the files read once before), and on a cold one where this process may drop
the caches (`/proc/sys/vm/drop_caches`, root). `bench/scale.py` times the same load inside a real
resume of every engine (one sample each); this one repeats a run enough to see the spread.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import cache

MB = 10**6
TARGET = 1.3
ROWS = 1024  # each tensor is ROWS x cols fp32; the optimizer file holds twice the model's bytes


def _make(directory: Path, mb: int) -> dict[Path, dict[str, torch.Tensor]]:
    from motif.storage import integrity
    from motif.train.slices import write_tensors

    per_tensor = 16 * MB
    count = max(3, mb * MB // per_tensor // 3)
    cols = per_tensor // 4 // ROWS
    files = {
        directory / "model.safetensors": {f"w{i}": torch.randn(ROWS, cols) for i in range(count)},
        directory / "optimizer.safetensors": {
            f"{m}.w{i}": torch.randn(ROWS, cols) for i in range(count) for m in ("exp_avg", "exp_avg_sq")
        },
    }
    sums = {path.name: write_tensors(path, tensors) for path, tensors in files.items()}
    integrity.write_record(directory, {name: integrity.entry(directory / name, s) for name, s in sums.items()})
    return {path: {k: torch.empty_like(v) for k, v in tensors.items()} for path, tensors in files.items()}


def _load(directory: Path, into: dict[Path, dict[str, torch.Tensor]], verify: bool) -> float:
    """The two files read as the ddp engine reads them at W = 1 (`read_all` on two threads)."""
    from motif.storage import integrity
    from motif.train.slices import TensorReader, read_all, reading_threads, whole_reads

    t0 = time.perf_counter()
    verifier = integrity.ReadVerifier(directory, integrity.read_record(directory) or {}) if verify else None
    readers = [TensorReader.file(path, verifier) for path in into]
    try:
        reads = []
        for reader, tensors in zip(readers, into.values(), strict=True):
            reads += whole_reads(reader, list(tensors.items()))
        read_all(reads, reading_threads(1))
    finally:
        for reader in readers:
            reader.close()
    if verifier is not None:
        problem, checked = verifier.finish()
        assert problem is None and len(checked) == len(into), problem
    return time.perf_counter() - t0


def _cat(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cat", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(directory: Path, into: dict[Path, dict[str, torch.Tensor]], cold: bool, repeat: int) -> dict:
    runs: dict[str, list[float]] = {"read + verify": [], "read only": [], "cat": []}
    for _ in range(repeat):
        for name, run in (
            ("cat", lambda: _cat(list(into))),
            ("read + verify", lambda: _load(directory, into, True)),
            ("read only", lambda: _load(directory, into, False)),
        ):
            if cold:
                cache.drop()
            else:
                _cat(list(into))  # warm: every byte in the page cache
            runs[name].append(run())
    return {name: statistics.median(times) for name, times in runs.items()} | {"runs": runs}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1300, help="checkpoint size in MB (default 1300, as bench.scale's)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per method and cache state, median kept")
    args = parser.parse_args(argv)
    caches = ["warm", "cold"] if cache.can_drop() else ["warm"]
    with tempfile.TemporaryDirectory(prefix="motif-bench-load-") as tmp:
        directory = Path(tmp)
        into = _make(directory, args.mb)
        nbytes = sum(p.stat().st_size for p in into)
        print(f"load benchmark: {nbytes / MB:.0f} MB in {len(into)} files, median of {args.repeat}", flush=True)
        for state in caches:
            m = measure(directory, into, state == "cold", args.repeat)
            ratio = m["read + verify"] / m["cat"]
            print(
                f"  {state:<4}  cat {m['cat']:.3f} s   read only {m['read only']:.3f} s   read + verify "
                f"{m['read + verify']:.3f} s: {ratio:.2f}x cat (target <= {TARGET}: "
                f"{'met' if ratio <= TARGET else 'MISSED'})",
                flush=True,
            )
        if caches == ["warm"]:
            print("  cold: not measured (the page cache can be dropped only as root)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
