"""Growth benchmark: streamed `motif grow` against load-all-grow-save and `cp -r`, side by side.

    python -m bench grow            # or: python -m bench.grow [--keep DIR] [--repeat N] [--cold]

A ~1.5 GB bf16 checkpoint in 4 shards is generated in a temporary directory, then each method
runs in its own subprocess under /usr/bin/time (wall time, peak RSS), on the same warm source:

* `motif grow` LlamaPro depth 16 -> 20 layers (unchanged tensors copied byte for byte),
* `motif grow` MSG width (hidden 2048 -> 2304, FFN 4608 -> 5120, query heads 16 -> 20),
* naive: `motif.load` everything, `grow_model` in memory, `motif.save`, for the same two growths,
* `cp -r` of the same files followed by `sync` (the floor for writing that many bytes).

Targets: peak RSS <= interpreter with torch + 2 x largest tensor + 300 MB; time per byte written
<= 1.2 x cp's for depth growth (a copy), <= 1.5 x for width growth (every tensor re-laid out).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import cache

MB = 10**6
SHAPE = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=4608,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=4,
    max_position_embeddings=4096,
    rope_theta=500000.0,
)
DEPTH = ["--layers", "20"]
WIDTH = ["--hidden", "2304", "--intermediate", "5120", "--heads", "20"]
# Work time per byte written over cp + sync's, per growth: depth copies bytes as cp does.
TARGETS = {"depth": 1.2, "width": 1.5}


def make_checkpoint(path: Path) -> int:
    """Random bf16 weights of SHAPE in ~400 MB shards; returns the size of the largest tensor."""
    import torch

    from motif.model.args import ModelArgs
    from motif.model.checkpoint import atomic_dir, plan_shards, shard_names, write_index
    from motif.model.safetensors_io import SafetensorsWriter

    args = ModelArgs(**SHAPE)
    specs = [(n, torch.bfloat16, s) for n, s in args.tensor_shapes().items()]
    shards = plan_shards(specs, 400 * MB)
    names = shard_names(args, len(shards))
    gen = torch.Generator().manual_seed(0)
    with atomic_dir(path, overwrite=True) as tmp:
        for shard, file in zip(shards, names, strict=True):
            writer = SafetensorsWriter(tmp / file, shard)
            for name, dtype, shape in shard:
                writer.write(name, (torch.randn(shape, generator=gen) * 0.02).to(dtype))
            writer.close()
        write_index(tmp, args, shards, names)
    return max(2 * torch.Size(s).numel() for _, _, s in specs)


def _timed(cmd: list[str]) -> tuple[float, int, float | None]:
    """Wall seconds and peak RSS (bytes) of `cmd`, measured by GNU time, and the seconds the command
    reports for its own work after start-up (`bench-work-seconds N` on stderr), if it does."""
    fd, out = tempfile.mkstemp()
    os.close(fd)
    try:
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", out, *cmd], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        wall, rss_kb = Path(out).read_text().split()[-2:]
        work = [float(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("bench-work-seconds")]
        return float(wall), int(rss_kb) * 1024, work[0] if work else None
    finally:
        os.unlink(out)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.grow", *args]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grow", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method, best wall time kept (default 3)")
    parser.add_argument(
        "--cold", action="store_true", help="drop the page cache before every run (needs root; default: warm cache)"
    )
    opts = parser.parse_args(argv)
    if opts.cold and not cache.can_drop():
        print(f"--cold: {cache.DROP_CACHES} is not writable (run as root)", file=sys.stderr)
        return 2
    work = Path(opts.keep or tempfile.mkdtemp(prefix="motif-bench-grow-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(work, opts.repeat, opts.cold)
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, repeat: int, cold: bool) -> int:
    src = work / "src"
    largest = make_checkpoint(src)
    for f in src.iterdir():  # warm the page cache so every method reads the same warm source
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass
    print(
        f"source: {_size(src) / MB:,.0f} MB in {len(list(src.glob('*.safetensors')))} shards; "
        f"largest tensor {largest / MB:.0f} MB"
    )
    _, base_rss, _ = _timed([sys.executable, "-c", "import torch, motif.growth.command, motif.model.checkpoint"])
    out = work / "out"
    methods = [
        ("cp -r + sync", ["sh", "-c", f"cp -r '{src}' '{out}' && sync"]),
        ("motif grow depth 16->20", _python("_grow", str(src), str(out), *DEPTH)),
        ("naive depth 16->20", _python("_naive", str(src), str(out), *DEPTH)),
        ("motif grow width (MSG)", _python("_grow", str(src), str(out), *WIDTH)),
        ("naive width (MSG)", _python("_naive", str(src), str(out), *WIDTH)),
    ]
    # Round-robin repeats, best wall time per method: the machine may be shared, and a slow
    # outlier says more about the neighbours than about the method.
    best: dict[str, tuple[float, int, int, float]] = {}
    for _ in range(repeat):
        for label, cmd in methods:
            shutil.rmtree(out, ignore_errors=True)
            if cold:  # every method reads its source from the disk
                cache.drop()
            wall, rss, work = _timed(cmd)
            written = _size(out)
            shutil.rmtree(out, ignore_errors=True)
            work = wall if work is None else work  # cp: all of it is work
            prev = best.get(label, (wall, rss, written, work))
            best[label] = (min(wall, prev[0]), max(rss, prev[1]), written, min(work, prev[3]))
    runs = [(label, *best[label]) for label, _ in methods]
    state = "cold cache (dropped before every run)" if cold else "warm cache"
    print(f"best of {repeat} runs each, {state}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    cp_per_byte = runs[0][1] / runs[0][3]
    rss_budget = base_rss + 2 * largest + 300 * MB
    print(
        f"interpreter with torch: {base_rss / MB:.0f} MB RSS; RSS target {rss_budget / MB:.0f} MB; "
        f"work-per-byte targets {TARGETS['depth']} x cp + sync (depth), {TARGETS['width']} x (width) "
        "('work': the command's own time after interpreter start-up)"
    )
    print(
        f"{'method':<26} {'wall s':>7} {'work s':>7} {'peak RSS MB':>12} {'written MB':>11} "
        f"{'wall vs cp':>10} {'work vs cp':>10}  targets"
    )
    for label, wall, rss, written, work in runs:
        ratio, work_ratio = wall / written / cp_per_byte, work / written / cp_per_byte
        verdict = ""
        if label.startswith("motif"):
            target = TARGETS["depth" if "depth" in label else "width"]
            speed = "met" if work_ratio <= target else "MISSED"
            verdict = f"work <= {target}x: {speed}; RSS: {'met' if rss <= rss_budget else 'MISSED'}"
        print(
            f"{label:<26} {wall:>7.2f} {work:>7.2f} {rss / MB:>12,.0f} {written / MB:>11,.0f} "
            f"{ratio:>9.2f}x {work_ratio:>9.2f}x  {verdict}"
        )
    # A missed target is a finding to read in the table, not a failure of the benchmark run.
    return 0


def _cli(argv: list[str]) -> int:
    """Internal entry points, each run in its own process so its peak RSS is its own."""
    mode, rest = argv[0], argv[1:]
    if mode == "_grow":  # exactly what `motif grow SRC DST ... --quiet` runs
        # torch and the growth code are imported before the clock starts (motif.growth imports them
        # only on first use, which would count the interpreter's start-up as work)
        import motif.growth.streamed  # noqa: F401
        from motif.growth import command

        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        t0 = time.perf_counter()
        status = command.run(parser.parse_args([*rest, "--quiet"]))
        print(f"bench-work-seconds {time.perf_counter() - t0:.3f}", file=sys.stderr)
        return status
    if mode == "_naive":
        import torch

        import motif
        from motif.growth import GrowthTargets, command, grow_model

        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        a = parser.parse_args(rest)
        t0 = time.perf_counter()
        model = motif.load(a.src, dtype=torch.bfloat16)
        grown, _ = grow_model(model, GrowthTargets(a.layers, a.hidden, a.intermediate, a.heads, a.kv_heads))
        del model
        motif.save(grown, a.dst)
        print(f"bench-work-seconds {time.perf_counter() - t0:.3f}", file=sys.stderr)
        return 0
    return main(argv)


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]) if len(sys.argv) > 1 and sys.argv[1].startswith("_") else main(sys.argv[1:]))
