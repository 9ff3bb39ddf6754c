"""Scale benchmark: does a sharded engine hold only its share, in every phase, and does `motif plan` know it?

    python -m bench scale            # or: python -m bench.scale [--engines fsdp,deepspeed] [--worlds 1,2,4]

A ~113M-parameter Llama (vocab 8192, hidden 768, 16 layers, fp32 on CPU) is saved as an HF
checkpoint, then for each engine and world size W, under torchrun with W processes:

  1. `motif train` from that checkpoint (each rank reads its rows or flat range of it), 2 steps,
     a checkpoint at step 2, the stage's output at step 3;
  2. `motif train --resume <step 2>` (each rank reads its part of a checkpoint), the output again.

Every rank records its peak RSS (VmHWM) minus its RSS once torch, the engine and motif are imported
(the interpreter baseline); the largest rank's figure of both phases is the engine's at W. Targets:
at W = 4 at most 0.35x of W = 1, and `motif plan`'s estimate for the same stage file (device cpu,
fp32) within 25% of the measurement. The same run times a step per engine and world size, the
checkpoint's save and load against `cp -r` + `sync` and `cat` of the same files (targets: at most
1.3x each, at every W; a ddp checkpoint is not sharded: each of its W ranks reads all of it, against W
`cat`s at once), and for fsdp prints `motif simulate`'s prediction beside the measurement:
memory (target 15%) and step time from the step's own operators replayed on this machine (target 30%).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import cache

ROOT = Path(__file__).resolve().parents[1]
SAVE_TARGET = 1.3  # checkpoint save time over `cp -r` + `sync` of the same files
LOAD_TARGET = 1.3  # checkpoint load time over `cat` of the same files
MODEL = {
    "vocab_size": 8192,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
}
SEQ_LEN = 256


def stage_section(engine: str, world: int, name: str = "scale") -> dict:
    return {
        "name": name,
        "input": "start",
        "model": MODEL,
        "output": f"out/{name}",
        "data": {
            "tokenizer": "data/tokenizer",
            "seq_len": SEQ_LEN,
            "shards": 4,
            "sources": [
                {"name": "ko", "language": "ko", "weight": 0.5, "path": "data/ko.jsonl"},
                {"name": "en", "language": "en", "weight": 0.5, "path": "data/en.jsonl"},
            ],
        },
        "optim": {"lr": 1.0e-4, "warmup_steps": 1, "weight_decay": 0.1},
        "train": {"max_steps": 3, "micro_batch_size": 1, "precision": "fp32", "activation_checkpointing": True},
        "parallel": {"engine": engine, "procs_per_node": world, "device": "cpu", "collective_timeout_s": 1800},
        "checkpoint": {"dir": f"ck/{name}", "every_steps": 2, "keep_last": 2},
    }


# ---- the worker: one rank of one phase --------------------------------------------------------


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def worker(stage_file: str, resume: str, report: str) -> int:
    # The interpreter baseline: every library a rank loads, before it holds any data or weight.
    import datasets  # noqa: F401
    import tokenizers  # noqa: F401
    import torch

    import motif.train.command  # noqa: F401
    import motif.train.trainer  # noqa: F401
    from motif.config import load_stage

    stage = load_stage(stage_file)
    if stage.parallel.engine == "deepspeed":
        import deepspeed  # noqa: F401
    import logging

    import motif.train.engines.fsdp  # noqa: F401

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    baseline = _status_kib("VmRSS")
    from motif.train.command import run_stage
    from motif.train.trainer import RunOptions

    steps = _time_train_steps()
    t0 = time.perf_counter()
    code = run_stage(stage, RunOptions(resume=resume, log_every=1), metrics_port=0)
    rank = int(os.environ.get("RANK", "0"))
    result = {"rank": rank, "code": code, "baseline_kib": baseline, "peak_kib": _status_kib("VmHWM")}
    result["train_steps"] = steps
    result["seconds"] = time.perf_counter() - t0
    Path(report, f"rank{rank}.json").write_text(json.dumps(result))
    if stage.parallel.engine == "deepspeed":
        sys.stdout.flush()
        os._exit(code)  # as motif train does: DeepSpeed's CPU comm threads can abort the teardown
    return code


def _time_train_steps() -> list[dict]:
    """Each `Trainer.train_step` of this rank, timed from outside: wall seconds and the process's CPU
    seconds (every thread's: gloo's included). CPU time leaves out the waits for a core that others
    hold; it still grows when they share the caches and the memory bandwidth."""
    from motif.train.trainer import Trainer

    steps: list[dict] = []
    original = Trainer.train_step

    def timed(self, batches, lr):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return original(self, batches, lr)
        finally:
            steps.append({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})

    Trainer.train_step = timed
    return steps


# ---- the driver --------------------------------------------------------------------------------


def _prepare(work: Path) -> None:
    from motif.config import parse_stage
    from motif.data.corpus import documents, write_corpus
    from motif.data.tokenizer import train_bpe
    from motif.model import Llama
    from motif.model.checkpoint import save

    write_corpus(work / "data", 600)
    train_bpe(documents("ko", 600) + documents("en", 600), 2048, work / "data" / "tokenizer")
    args = parse_stage(stage_section("ddp", 1)).model.replace(torch_dtype="float32")
    model = Llama(args)
    model.init_weights(seed=0)
    save(model, work / "start")
    del model


def _run_phase(work: Path, engine: str, world: int, resume: str, tag: str) -> dict:
    report = work / "reports" / tag
    report.mkdir(parents=True)
    stage = work / f"{engine}-{world}.yaml"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
    cmd += ["-m", "bench.scale", "--worker", str(stage), resume, str(report)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["LOGLEVEL"] = "WARNING"
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    ranks = [json.loads(p.read_text()) for p in sorted(report.glob("rank*.json"))]
    if done.returncode != 0 or len(ranks) != world or any(r["code"] for r in ranks):
        raise RuntimeError(f"{tag}: exit {done.returncode}\n{done.stderr[-3000:]}")
    import statistics

    return {
        # the slowest rank's median train_step, wall and CPU seconds
        "train_step_s": max(statistics.median(s["wall_s"] for s in r["train_steps"]) for r in ranks),
        "train_step_cpu_s": max(statistics.median(s["cpu_s"] for s in r["train_steps"]) for r in ranks),
        "peak_over_baseline": max((r["peak_kib"] - r["baseline_kib"]) * 1024 for r in ranks),
        "baseline": max(r["baseline_kib"] for r in ranks) * 1024,
        "seconds": max(r["seconds"] for r in ranks),
        "log": done.stderr,
    }


def _plan(work: Path, engine: str, world: int) -> int:
    from motif.plan import plan_recipe

    recipe = work / "plan" / f"{engine}-{world}"
    recipe.mkdir(parents=True)
    section = stage_section(engine, world)
    (recipe / "stage.yaml").write_text(yaml.safe_dump({"motif": section}))
    (row,) = plan_recipe(recipe)
    return row["memory_bytes"]["total"]


def _simulate(work: Path, world: int) -> dict:
    """`motif simulate`'s prediction for the fsdp stage at W: memory per rank and step time.

    The device is this machine as W ranks see it, measured in the same run (`motif.simulate.replay`):
    every distinct operator call of the simulated step replayed on real tensors of its shapes, one
    thread (as a rank computes under torchrun here), and the share of the machine a rank keeps when
    W ranks compute at once (W threads running the step's main GEMM and a copy, against one); the
    network is W gloo ranks' all-reduce over loopback (at least two), not overlapping compute.
    """
    from motif.plan import resolve_stages
    from motif.simulate.loopback import measure_loopback
    from motif.simulate.simulate import simulate_stage
    from motif.simulate.timing import Network

    path = work / "plan" / f"simulate-{world}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"motif": stage_section("fsdp", world)}))
    (shape,) = resolve_stages([path])
    loopback = measure_loopback(ranks=max(2, world))
    network = Network(loopback, loopback, world, world, overlaps_compute=False)
    row = simulate_stage(shape, shape.stage, device_kind="cpu", cpu_threads=1, network=network)
    cpu = row["cpu_measured"]
    return {
        "bytes": row["total_bytes"],
        "step_s": row["step_seconds"],
        "compute_s": row["compute_seconds"],
        "comm_s": row["comm_seconds"],
        "gemm_flops": cpu["gemm_flops_per_s"],
        "copy_bytes_per_s": cpu["copy_bytes_per_s"],
        "flops_share": cpu["flops_share"],
        "bytes_share": cpu["bytes_share"],
        "replayed_calls": cpu["replayed_calls"],
        "fallback_calls": cpu["fallback_calls"],
        "compute_cpu_s": cpu["compute_cpu_seconds"],
        "loopback_bytes_per_s": loopback,
        "load_average": os.getloadavg()[0],
    }


def _copy_baseline(path: Path, readers: int) -> dict:
    """The same bytes as the checkpoint, copied (`cp -r` + sync) and read (`cat`), for its save and
    load; `readers` `cat`s at once where every rank reads every file (a replicated checkpoint)."""
    files = _files(path)
    nbytes = sum(Path(f).stat().st_size for f in files)
    dst = path.parent / "copy"
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(path), str(dst)], check=True)
    subprocess.run(["sync", "-f", str(dst)], check=True)
    cp = time.perf_counter() - t0
    shutil.rmtree(dst)
    return {"bytes": nbytes, "files": len(files), "readers": readers, "cp_sync_s": cp, "cat_s": _cat(files, readers)}


def _cold_cat(path: Path, readers: int) -> dict:
    """`cat` of the checkpoint's files from the disk (the page cache dropped first)."""
    files = _files(path)
    cache.drop()
    return {"cold_cat_s": _cat(files, readers)}


def _files(path: Path) -> list[str]:
    return [str(f) for f in sorted(path.rglob("*")) if f.is_file()]


def _cat(files: list[str], readers: int) -> float:
    """Seconds for `readers` `cat`s of `files` to /dev/null, run at once."""
    t0 = time.perf_counter()
    cats = [subprocess.Popen(["cat", *files], stdout=subprocess.DEVNULL) for _ in range(readers)]
    if any(cat.wait() for cat in cats):
        raise RuntimeError(f"cat {files} failed")
    return time.perf_counter() - t0


def _logged_seconds(log: str, marker: str) -> float | None:
    for line in log.splitlines():
        if marker in line:
            return float(line.split(marker, 1)[1].split("s", 1)[0])
    return None


def _steps(log: str, world: int) -> list[float]:
    """Every step's time from the trainer's per-step log lines (tok/s of all ranks, SEQ_LEN tokens each)."""
    rates = [float(line.split(" tok/s")[0].rsplit(" ", 1)[1]) for line in log.splitlines() if " tok/s " in line]
    return [SEQ_LEN * world / rate for rate in rates]


def _step_seconds(log: str, world: int) -> float | None:
    """The median step time."""
    import statistics

    steps = _steps(log, world)
    return statistics.median(steps) if steps else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--worker", nargs=3, metavar=("STAGE", "RESUME", "REPORT"), help=argparse.SUPPRESS)
    parser.add_argument("--engines", default="fsdp,deepspeed,ddp")
    parser.add_argument("--worlds", default="1,2,4")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench" / "scale.json"))
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    engines, worlds = args.engines.split(","), [int(w) for w in args.worlds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="motif-bench-scale-"))
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict = {"date": date, "model": MODEL, "seq_len": SEQ_LEN, "runs": {}}
    try:
        _prepare(work)
        for engine in engines:
            for world in worlds:
                (work / f"{engine}-{world}.yaml").write_text(yaml.safe_dump({"motif": stage_section(engine, world)}))
                first = _run_phase(work, engine, world, "none", f"{engine}-{world}-start")
                # A ddp rank holds the whole model and optimizer: every rank reads every file.
                readers = world if engine == "ddp" else 1
                io = _copy_baseline(work / "ck/scale/step_00000002", readers)
                second = _run_phase(work, engine, world, "ck/scale/step_00000002", f"{engine}-{world}-resume")
                io["save_s"] = _logged_seconds(first["log"], "checkpoint ck/scale/step_00000002 written in ")
                io["load_s"] = _logged_seconds(second["log"], "(read in ")
                if cache.can_drop():  # the same load from the disk (root only): a restart on a fresh node
                    io.update(_cold_cat(work / "ck/scale/step_00000002", readers))
                    cache.drop()
                    cold = _run_phase(work, engine, world, "ck/scale/step_00000002", f"{engine}-{world}-cold")
                    io["cold_load_s"] = _logged_seconds(cold["log"], "(read in ")
                for d in ("ck", "out"):
                    shutil.rmtree(work / d, ignore_errors=True)
                measured = max(first["peak_over_baseline"], second["peak_over_baseline"])
                planned = _plan(work, engine, world)
                simulated = _simulate(work, world) if engine == "fsdp" else None
                results["runs"][f"{engine}/{world}"] = {
                    "engine": engine,
                    "world": world,
                    "peak_over_baseline_bytes": measured,
                    "start_phase_bytes": first["peak_over_baseline"],
                    "resume_phase_bytes": second["peak_over_baseline"],
                    "baseline_bytes": first["baseline"],
                    "plan_bytes": planned,
                    "plan_error": planned / measured - 1,
                    "step_s": _step_seconds(first["log"], world),
                    "steps_s": _steps(first["log"], world),
                    "train_step_s": first["train_step_s"],
                    "train_step_cpu_s": first["train_step_cpu_s"],
                    "simulated": simulated,
                    "checkpoint": io,
                }
                _report_row(results["runs"][f"{engine}/{world}"])
        _report(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nfigures: {args.json}")
    return 0


def _report_row(r: dict) -> None:
    gib = 2**30
    step = f"{r['step_s']:.2f} s/step" if r["step_s"] else "-"
    io = r["checkpoint"]
    save = _versus(io.get("save_s"), io["cp_sync_s"], "cp+sync", SAVE_TARGET)
    cat = "cat" if io["readers"] == 1 else f"{io['readers']} cats at once (each rank reads all of it)"
    load = _versus(io.get("load_s"), io["cat_s"], cat, LOAD_TARGET)
    if io.get("cold_load_s"):
        load += f"; cold cache {_versus(io['cold_load_s'], io['cold_cat_s'], cat, LOAD_TARGET)}"
    print(
        f"  {r['engine']:<9} W={r['world']}  peak RSS over baseline {r['peak_over_baseline_bytes'] / gib:5.2f} GiB "
        f"(start {r['start_phase_bytes'] / gib:.2f}, resume {r['resume_phase_bytes'] / gib:.2f})   "
        f"motif plan {r['plan_bytes'] / gib:5.2f} GiB ({100 * r['plan_error']:+.0f}%)   {step}   "
        f"checkpoint {io['bytes'] / 2**20:.0f} MiB in {io['files']} files: save {save}, load {load}",
        flush=True,
    )
    sim = r.get("simulated")
    if sim:
        mem_error = sim["bytes"] / r["peak_over_baseline_bytes"] - 1
        time_error = f"{100 * (sim['step_s'] / r['step_s'] - 1):+.0f}%" if r["step_s"] else "-"
        print(
            f"  {'':<9}      motif simulate {sim['bytes'] / gib:5.2f} GiB ({100 * mem_error:+.0f}%, target 15%)   "
            f"predicted {sim['step_s']:.2f} s/step (compute {sim['compute_s']:.2f} + collectives "
            f"{sim['comm_s']:.2f}) beside measured {step} ({time_error}, target 30%; {sim['replayed_calls']} "
            f"calls replayed, {sim['fallback_calls']} not; a rank alone {sim['gemm_flops'] / 1e9:.1f} GFLOP/s at "
            f"the main GEMM, {sim['copy_bytes_per_s'] / 1e9:.1f} GB/s copy; share of W: {sim['flops_share']:.2f} "
            f"GEMM, {sim['bytes_share']:.2f} copy; gloo loopback {sim['loopback_bytes_per_s'] / 1e9:.2f} GB/s; "
            f"load average {sim['load_average']:.1f})",
            flush=True,
        )
        predicted_cpu = sim["compute_cpu_s"] + sim["comm_s"]
        print(
            f"  {'':<9}      CPU seconds a rank spends in a step: predicted {sim['compute_cpu_s']:.2f} (compute) + "
            f"{sim['comm_s']:.2f} (collectives) beside measured {r['train_step_cpu_s']:.2f} in train_step "
            f"({100 * (predicted_cpu / r['train_step_cpu_s'] - 1):+.0f}%; "
            "waiting for a core is not CPU time, sharing a cache is)",
            flush=True,
        )


def _versus(seconds: float | None, floor: float, what: str, target: float) -> str:
    """`1.42x cp+sync (target <= 1.3: MISSED)`: a ratio printed beside its target."""
    if not seconds:
        return "-"
    ratio = seconds / floor
    return f"{ratio:.2f}x {what} (target <= {target}: {'met' if ratio <= target else 'MISSED'})"


def _report(results: dict) -> None:
    print(f"scale benchmark, {results['date']}, fp32 CPU, seq {results['seq_len']}, micro-batch 1, AC on")
    runs = results["runs"]
    for engine in sorted({r["engine"] for r in runs.values()}):
        mine = {r["world"]: r for r in runs.values() if r["engine"] == engine}
        if 1 in mine and 4 in mine:
            ratio = mine[4]["peak_over_baseline_bytes"] / mine[1]["peak_over_baseline_bytes"]
            target = "replicated: every rank holds everything" if engine == "ddp" else "target <= 0.35"
            print(f"  {engine:<9} W=4 / W=1: {ratio:.2f}x ({target})")
        worst = max(abs(r["plan_error"]) for r in mine.values())
        print(f"  {engine:<9} motif plan within {100 * worst:.0f}% of the measurement (target 25%)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
