"""A warm process that forks `motif` commands: real processes and real signals, without paying the
~10 s interpreter start-up (torch, datasets) for each of the dozens of runs the fault tests make.

The server imports motif's heavy dependencies once, starts no thread, and on request forks a child
that runs `motif.cli.main(argv)` with its own working directory, environment and log file. The
test kills children by pid with real signals; the server reaps them and reports their status
(negative: killed by that signal), as `subprocess` does.

    with Zygote() as z:
        child = z.spawn(["train", "stage.yaml"], cwd=workdir, log=workdir / "run.log")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DS_ACCELERATOR": "cpu",
}


@dataclass
class Child:
    zygote: Zygote
    pid: int
    log: Path

    def poll(self) -> int | None:
        return self.zygote._request({"op": "poll", "pid": self.pid})["status"]

    def wait(self, timeout: float = 120) -> int:
        status = self.zygote._request({"op": "wait", "pid": self.pid, "timeout": timeout})["status"]
        if status is None:
            os.kill(self.pid, signal.SIGKILL)
            self.zygote._request({"op": "wait", "pid": self.pid, "timeout": 30})
            raise TimeoutError(f"pid {self.pid} still running after {timeout}s; log:\n{self.text()[-3000:]}")
        return status

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.pid, sig)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Zygote:
    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
        env.update(CHILD_ENV)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        assert self._read()["ready"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote exited with status {self.proc.wait()}")
        return json.loads(line)

    def _request(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def spawn(
        self, argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None, fsize: int | None = None
    ) -> Child:
        """Fork `motif ARGV`; `fsize`: RLIMIT_FSIZE of the child in bytes (writes past it fail with EFBIG)."""
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        req = {"op": "spawn", "argv": argv, "cwd": str(cwd), "log": str(log), "env": env or {}, "fsize": fsize}
        reply = self._request(req)
        return Child(self, reply["pid"], Path(log))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the server side -----------------------------------------------------------------------------


def _child(req: dict) -> None:
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        os.chdir(req["cwd"])
        os.environ.update(req["env"])
        if req.get("fsize") is not None:
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
        from motif.cli import main

        code = main(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _status(raw: int) -> int:
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def serve() -> None:
    import datasets  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch

    import motif.cli
    import motif.growth.streamed  # noqa: F401
    import motif.metrics.prometheus  # noqa: F401
    import motif.train.trainer  # noqa: F401

    torch.set_num_threads(1)
    motif.cli.build_parser()  # imports every command module
    done: dict[int, int] = {}

    def reap(pid: int, block_s: float) -> int | None:
        deadline = time.monotonic() + block_s
        while pid not in done:
            got, raw = os.waitpid(pid, os.WNOHANG)
            if got:
                done[pid] = _status(raw)
            elif time.monotonic() >= deadline:
                return None
            else:
                time.sleep(0.01)
        return done[pid]

    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _child(req)
            reply = {"pid": pid}
        elif req["op"] == "poll":
            reply = {"status": reap(req["pid"], 0)}
        else:
            reply = {"status": reap(req["pid"], req["timeout"])}
        print(json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
    serve()
