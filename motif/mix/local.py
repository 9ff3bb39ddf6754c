"""Run a sweep's proxies on this machine, as parallel `motif train` processes (the demo's way).

Each proxy is `python -m motif train <proxy>.yaml` (torchrun with --nproc > 1), started from the
working directory the stage's relative paths resolve against, its output in `<sweep>/<proxy>.log`.
At most `jobs` run at once, each with its share of the CPU threads, and each on a free metrics
port. A stage that grows is grown once first (`motif grow --stage`): the proxies then all read the
same grown checkpoint, each checking it under the growth's exclusive lease, so they start one
after another (the next once the previous has logged a first record). A proxy that finished in an
earlier run is kept; one that did not resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from motif.errors import MotifError
from motif.launch import train_argv
from motif.metrics.jsonl import read
from motif.mix.results import heldout_points, metrics_path
from motif.mix.sweep import Proxy, Sweep, write_manifest
from motif.mix.trial import RESULT_NAME, write_result

ROOT = Path(__file__).resolve().parents[2]


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("LOGLEVEL", "WARNING")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def command(proxy_file: Path, nproc: int) -> list[str]:
    argv = train_argv(str(proxy_file), "--metrics-port", "0", "--resume", "auto", "--log-every", "10")
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *argv]
    return [sys.executable, *argv]


def finished(sweep_dir: Path, sweep: Sweep, proxy: Proxy) -> bool:
    path = metrics_path(sweep_dir, proxy)
    return path.is_file() and sweep.steps in heldout_points(path)


def report_result(sweep_dir: Path, sweep: Sweep, proxy: Proxy) -> None:
    """The proxy's result in the format a Katib trial reports it (motif.mix.trial)."""
    points = heldout_points(metrics_path(sweep_dir, proxy))
    write_result(sweep_dir / proxy.name / RESULT_NAME, points[sweep.steps], sweep.steps)


def grow_once(sweep_dir: Path, sweep: Sweep, workdir: Path, quiet: bool) -> None:
    """`motif grow --stage` with the first proxy: idempotent, reused when already grown."""
    cmd = [sys.executable, "-m", "motif", "grow", "--stage", str((sweep_dir / sweep.proxies[0].file).resolve())]
    if quiet:
        cmd.append("--quiet")
    r = subprocess.run(cmd, cwd=workdir, env=_env(os.cpu_count() or 1), capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise MotifError(f"{sweep.stage_file}: growing the stage's checkpoint failed: {last}")
    if not quiet:
        print(f"   {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else 'grown'}", flush=True)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _starting(sweep_dir: Path, running: dict, sizes: dict[str, int]) -> bool:
    """A proxy that has not logged since its launch: it may still be checking the shared grown
    checkpoint, which `motif grow` does under an exclusive lease that a second one would fail on."""
    return any(
        proc.poll() is None and _size(metrics_path(sweep_dir, p)) <= sizes[p.name] for p, proc, _ in running.values()
    )


def _last_step(path: Path) -> int:
    if not path.is_file():
        return 0
    steps = [r["step"] for r in read(path) if isinstance(r.get("step"), int)]
    return max(steps, default=0)


def run(sweep_dir: Path, sweep: Sweep, workdir: Path, *, jobs: int, nproc: int, grows: bool, quiet: bool) -> int:
    """Run every unfinished proxy; returns how many failed. The manifest records each outcome."""
    from tqdm import tqdm

    todo = []
    for p in sweep.proxies:
        if finished(sweep_dir, sweep, p):
            p.status, p.exit_code = "done", 0
        else:
            todo.append(p)
    write_manifest(sweep_dir, sweep)
    if not todo:
        return 0
    if grows:
        grow_once(sweep_dir, sweep, workdir, quiet)
    threads = max(1, (os.cpu_count() or 1) // max(1, min(jobs, len(todo)) * nproc))
    waiting, running = list(todo), {}
    bar = tqdm(total=sweep.steps * len(todo), unit="step", desc="proxies", disable=quiet, dynamic_ncols=True)
    done_steps = {p.name: 0 for p in todo}
    sizes: dict[str, int] = {}  # metrics file size of each proxy at its launch
    try:
        while waiting or running:
            while waiting and len(running) < jobs and not (grows and _starting(sweep_dir, running, sizes)):
                p = waiting.pop(0)
                sizes[p.name] = _size(metrics_path(sweep_dir, p))
                log = (sweep_dir / p.log).open("a")
                proc = subprocess.Popen(
                    command((sweep_dir / p.file).resolve(), nproc),
                    cwd=workdir,
                    env=_env(threads),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
                running[p.name] = (p, proc, log)
                p.status = "running"
            time.sleep(0.5)
            for name, (p, proc, log) in list(running.items()):
                step = _last_step(metrics_path(sweep_dir, p))
                bar.update(max(0, min(step, sweep.steps) - done_steps[name]))
                done_steps[name] = max(done_steps[name], min(step, sweep.steps))
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                p.exit_code = proc.returncode
                p.status = "done" if proc.returncode == 0 and finished(sweep_dir, sweep, p) else "failed"
                if p.status == "done":
                    report_result(sweep_dir, sweep, p)
                bar.update(sweep.steps - done_steps[name])
                if p.status == "failed" and not quiet:
                    why = f"exit status {proc.returncode}" if proc.returncode else "no held-out record at its last step"
                    tqdm.write(f"   {p.name}: failed ({why}; log {sweep_dir / p.log})")
                write_manifest(sweep_dir, sweep)
    finally:
        for p, proc, log in running.values():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            p.status, p.exit_code = "failed", proc.returncode
        write_manifest(sweep_dir, sweep)
        bar.close()
    return sum(p.status == "failed" for p in todo)
