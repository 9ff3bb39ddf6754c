"""Copy benchmark: how to copy a weight file and checksum it in the same pass, against `cp` + `sync`.

    python -m bench copy            # or: python -m bench.copy [--mb 1500] [--repeat 3]

`motif grow` copies every tensor LlamaPro leaves unchanged byte for byte and must verify the
source as it goes (an xxh3 checksum of every byte, for the source's record, and one for the
output's). Two ways to do that in one pass over the source are timed here, side by side on the same
file, each ending with an fsync of its output:

* `copy_file_range + hash`: the kernel copies (no user-space copy, as cp does), then the same range
  is read back from the page cache, where the copy has just put it, and hashed twice (what
  `SafetensorsWriter.copy` does);
* `pread + hash + write`: each 16 MB chunk is read into a reusable buffer, hashed twice and
  written from it (the bytes cross user space once, read and written);

with `copy_file_range` alone (no hash) and `cp` + `sync` as the floors. Each runs on a warm page
cache (the source read once before), and on a cold one when this process may drop the caches
(`/proc/sys/vm/drop_caches`, root). The figures go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import xxhash

from bench import cache

MB = 10**6
CHUNK = 16 << 20


def _crf_only(src: Path, dst: Path) -> None:
    size = src.stat().st_size
    with open(src, "rb") as s, open(dst, "wb") as d:
        done = 0
        while done < size:
            done += os.copy_file_range(s.fileno(), d.fileno(), size - done, done)
        os.fsync(d.fileno())


def _crf_then_hash(src: Path, dst: Path) -> None:
    size, buf = src.stat().st_size, bytearray(CHUNK)
    view, source, output = memoryview(buf), xxhash.xxh3_128(), xxhash.xxh3_128()
    with open(src, "rb") as s, open(dst, "wb") as d:
        done = 0
        while done < size:
            n = os.copy_file_range(s.fileno(), d.fileno(), min(size - done, 1 << 30), done)
            end = done + n
            while done < end:
                k = os.preadv(s.fileno(), [view[: min(CHUNK, end - done)]], done)
                source.update(view[:k])
                output.update(view[:k])
                done += k
        os.fsync(d.fileno())


def _pread_hash_write(src: Path, dst: Path) -> None:
    size, buf = src.stat().st_size, bytearray(CHUNK)
    view, source, output = memoryview(buf), xxhash.xxh3_128(), xxhash.xxh3_128()
    with open(src, "rb") as s, open(dst, "wb") as d:
        done = 0
        while done < size:
            k = os.preadv(s.fileno(), [view[: min(CHUNK, size - done)]], done)
            source.update(view[:k])
            output.update(view[:k])
            written = 0
            while written < k:
                written += os.write(d.fileno(), view[written:k])
            done += k
        os.fsync(d.fileno())


def _cp_sync(src: Path, dst: Path) -> None:
    subprocess.run(["cp", str(src), str(dst)], check=True)
    subprocess.run(["sync", "-f", str(dst)], check=True)


METHODS: dict[str, Callable[[Path, Path], None]] = {
    "cp + sync": _cp_sync,
    "copy_file_range only": _crf_only,
    "copy_file_range + hash": _crf_then_hash,
    "pread + hash + write": _pread_hash_write,
}


def _prepare_cache(src: Path, cold: bool) -> None:
    if cold:
        cache.drop()
        return
    os.sync()  # the previous run's writeback must not be billed to this one
    with open(src, "rb") as f:
        while f.read(64 << 20):
            pass


def measure(src: Path, work: Path, cold: bool, repeat: int) -> dict[str, float]:
    """Best wall seconds of each method over `repeat` round-robin runs."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        for label, method in METHODS.items():
            dst = work / "copy.bin"
            _prepare_cache(src, cold)
            t0 = time.perf_counter()
            method(src, dst)
            seconds = time.perf_counter() - t0
            dst.unlink()
            best[label] = min(seconds, best.get(label, seconds))
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.copy", description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=1500, help="size of the file copied, MB (default 1500)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method, best kept (default 3)")
    opts = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="motif-bench-copy-"))
    try:
        src = work / "source.bin"
        with open(src, "wb") as f:
            for _ in range(max(1, opts.mb * MB // CHUNK)):
                f.write(os.urandom(CHUNK))
        size = src.stat().st_size
        caches = ["warm", "cold"] if cache.can_drop() else ["warm"]
        print(f"{size / MB:,.0f} MB file; best of {opts.repeat}; caches: {', '.join(caches)}", flush=True)
        if "cold" not in caches:
            print("cold cache: not measured (dropping the page cache needs root)")
        print(f"{'method':<24} " + " ".join(f"{c + ' s':>8} {'vs cp':>6}" for c in caches))
        figures = {c: measure(src, work, c == "cold", opts.repeat) for c in caches}
        for label in METHODS:
            cells = [f"{figures[c][label]:>8.2f} {figures[c][label] / figures[c]['cp + sync']:>5.2f}x" for c in caches]
            print(f"{label:<24} " + " ".join(cells))
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
