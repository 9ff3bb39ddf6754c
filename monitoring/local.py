"""A local Prometheus for motif runs on this machine (`make monitor`), also used by the tests.

    python -m monitoring.local                          # scrape 127.0.0.1:9401 (the default metrics.port)
    python -m monitoring.local --target 127.0.0.1:9555  # another exporter; repeat for several
    python -m monitoring.local --port 9090              # a fixed Prometheus port (default: a free one)
    python -m monitoring.local --pushgateway 127.0.0.1:9091  # also the Pushgateway motif eval pushes to

Prometheus listens on 127.0.0.1 only, keeps its data in a temporary directory (removed on exit),
loads the motif alert rules, and gives local targets the labels a PodMonitor gives pods in the
cluster (`namespace`, `job`, `pod`, `container`), so the dashboards and alerts work unchanged.
Grafana: `monitoring/compose.yaml` (see docs/monitoring.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from monitoring import config
from monitoring.generate import RULES_FILE
from motif.config import MetricsConfig

DEFAULT_TARGET = f"127.0.0.1:{MetricsConfig().port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def target_labels(job: str) -> dict[str, str]:
    """Labels of a local trainer target, the same ones a PodMonitor gives a rank-0 pod."""
    return {"namespace": "local", "pod": f"{job}-master-0", "container": config.TRAINER_CONTAINER}


def prometheus_config(
    targets: list[str], job: str, interval: str, rules: list[Path], pushgateway: str | None = None
) -> dict:
    scrape = [
        {
            "job_name": job,
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "static_configs": [{"targets": targets, "labels": target_labels(job)}],
        }
    ]
    if pushgateway:
        # Pushed series keep their own labels (stage, task, metric; job of the pusher): honor_labels.
        scrape.append(
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [{"targets": [pushgateway], "labels": {"namespace": "local"}}],
            }
        )
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p.resolve()) for p in rules],
        "scrape_configs": scrape,
    }


class LocalServer:
    """A real server process on 127.0.0.1 with a throwaway directory and log; a context manager.

    Subclasses say which binary, its arguments (`command`) and when it is ready (`is_ready`); starting,
    waiting for readiness, logs and stopping are the same for Prometheus and the Pushgateway.
    """

    program = ""  # the Debian binary's name; also the prefix of the throwaway directory

    def __init__(self, port: int | None, binary: str | None, package: str) -> None:
        self.binary = binary or shutil.which(self.program)
        if not self.binary:
            raise FileNotFoundError(f"{self.program} not found: run `make deps` (Debian package {package})")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None

    def command(self, directory: Path) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        """Called once /-/ready answers 200."""
        return True

    def start(self, timeout: float = 30.0):
        self.dir = Path(tempfile.mkdtemp(prefix=f"motif-{self.program}-"))
        self.log = (self.dir / f"{self.program}.log").open("w")
        self.proc = subprocess.Popen(self.command(self.dir), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.program} exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200 and self.is_ready():
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.program} not ready after {timeout}s")

    def logs(self) -> str:
        return (self.dir / f"{self.program}.log").read_text() if self.dir else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.dir is not None:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Prometheus(LocalServer):
    """A real Prometheus process on 127.0.0.1 with a throwaway data directory; a context manager."""

    program = "prometheus"

    def __init__(
        self,
        targets: list[str],
        job: str = "motif-local",
        interval: str = "5s",
        port: int | None = None,
        rules: list[Path] | None = None,
        binary: str | None = None,
        pushgateway: str | None = None,
    ) -> None:
        """`pushgateway`: host:port of a Pushgateway to scrape as well (motif eval pushes its scores there)."""
        super().__init__(port, binary, "prometheus")
        self.targets, self.job, self.interval = targets, job, interval
        self.rules = [RULES_FILE] if rules is None else rules
        self.pushgateway = pushgateway

    def command(self, directory: Path) -> list[str]:
        cfg = directory / "prometheus.yml"
        config = prometheus_config(self.targets, self.job, self.interval, self.rules, self.pushgateway)
        cfg.write_text(yaml.safe_dump(config))
        return [
            self.binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
        ]

    def is_ready(self) -> bool:
        # Ready, and the scrape targets synced (they appear a few seconds after start).
        expected = len(self.targets) + (1 if self.pushgateway else 0)
        return len(self.api("targets")["activeTargets"]) == expected

    # ---- HTTP API ------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> dict:
        """GET /api/v1/<path>; returns `data`, raises ValueError with Prometheus' error otherwise."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: str) -> list[dict]:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)["result"]

    def targets_up(self) -> list[dict]:
        return [t for t in self.api("targets")["activeTargets"] if t["health"] == "up"]


class Pushgateway(LocalServer):
    """A real Pushgateway (Debian `prometheus-pushgateway`) on 127.0.0.1 with a throwaway store; a context manager.

    `motif eval --pushgateway` pushes stage scores to it; a `Prometheus(..., pushgateway=...)` scrapes it.
    """

    program = "prometheus-pushgateway"

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        super().__init__(port, binary, "prometheus-pushgateway")
        self.address = f"127.0.0.1:{self.port}"

    def command(self, directory: Path) -> list[str]:
        return [
            self.binary,
            f"--web.listen-address={self.address}",
            f"--persistence.file={directory / 'store'}",
            "--persistence.interval=1s",
        ]

    def metrics(self) -> str:
        """The Pushgateway's own /metrics page: every pushed series, as Prometheus scrapes it."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            return r.read().decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.local", description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", metavar="HOST:PORT", help=f"exporter (default {DEFAULT_TARGET})")
    parser.add_argument("--job", default="motif-local", help="job label of the targets (default motif-local)")
    parser.add_argument("--port", type=int, default=None, help="Prometheus port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--interval", default="5s", help="scrape and rule evaluation interval (default 5s)")
    parser.add_argument("--pushgateway", metavar="HOST:PORT", help="also scrape this Pushgateway (motif eval scores)")
    args = parser.parse_args(argv)
    prom = Prometheus(
        args.target or [DEFAULT_TARGET],
        job=args.job,
        interval=args.interval,
        port=args.port,
        pushgateway=args.pushgateway,
    )
    # Ctrl-C and SIGTERM only set a flag: an exception raised at an arbitrary point (say inside
    # Popen.poll, between taking and releasing its lock) could leave the clean-up below hanging.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    with prom:
        print(f"Prometheus: {prom.url}  (scraping {', '.join(prom.targets)} as job {args.job!r})", flush=True)
        print(f"  targets: {prom.url}/targets   alerts: {prom.url}/alerts", flush=True)
        print(
            f"  Grafana: PROMETHEUS_URL={prom.url} "
            "podman compose -f monitoring/compose.yaml up   (then http://127.0.0.1:3000)",
            flush=True,
        )
        print("Ctrl-C stops it (its data directory is removed).", flush=True)
        while not stopping.wait(1) and prom.proc is not None and prom.proc.poll() is None:
            pass
        if prom.proc is not None and prom.proc.poll() is not None:
            print(f"prometheus exited:\n{prom.logs()[-2000:]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
