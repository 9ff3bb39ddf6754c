"""Training progress in the TrainJob's `status.trainerStatus` (Kubeflow Trainer v2, trainer.kubeflow.org/v1alpha1).

A metrics backend of rank 0: from the steps it is told of it keeps the progress percentage, the
estimated remaining seconds, a few metrics (loss, tokens per second, step, total steps) and the
time of the last update, and a background thread merge-patches them into the `status` subresource
of the TrainJob the pod runs under, at most once every `every_s` seconds (and once more when the
stage ends). The field names are those of the TrainJob CRD (`TrainJobTrainerStatus`, KEP-2779).

It is on only when the chart says which TrainJob the pod belongs to (MOTIF_TRAINJOB_NAME, and
MOTIF_TRAINJOB_NAMESPACE or the service account's namespace) and uses what Kubernetes gives every
pod: KUBERNETES_SERVICE_HOST/PORT and the service account's CA and projected token (re-read for
each patch, as the kubelet rotates it). Training never waits for the API server and never fails
because of it: `log()` only records, the patch runs on its own thread, and a refused or failed
patch is one warning line (at most one every `warn_every_s`), training going on.

Standard library only: no kubernetes client, no torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from motif.metrics import names

log = logging.getLogger(__name__)

ENV_NAME = "MOTIF_TRAINJOB_NAME"
ENV_NAMESPACE = "MOTIF_TRAINJOB_NAMESPACE"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT_S = 5.0  # one patch; the training loop never waits for it
WARN_EVERY_S = 600.0
INT32_MAX = 2**31 - 1  # estimatedRemainingSeconds is an int32


@dataclass(frozen=True)
class Target:
    """Where the status goes and with which credentials."""

    server: str  # https://host:port
    ca_file: str
    token_file: str
    namespace: str
    name: str

    @property
    def path(self) -> str:
        return f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{self.namespace}/trainjobs/{self.name}/status"

    @property
    def what(self) -> str:
        return f"trainjobs/status {self.name} in namespace {self.namespace}"


def target_from_env(environ=None, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> Target | None:
    """The TrainJob of this pod, or None when the pod runs under none (the reporter is then off).
    A pod that names a TrainJob but lacks the API server or the token says so in one warning."""
    env = os.environ if environ is None else environ
    name = env.get(ENV_NAME, "").strip()
    if not name:
        return None
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
    namespace = env.get(ENV_NAMESPACE, "").strip() or _read(sa_dir / "namespace")
    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    missing = [
        what
        for what, absent in (
            ("KUBERNETES_SERVICE_HOST", not host),
            (f"{ENV_NAMESPACE} (or {sa_dir / 'namespace'})", not namespace),
            (str(token), not token.is_file()),
            (str(ca), not ca.is_file()),
        )
        if absent
    ]
    if missing:
        log.warning("trainjob progress: off for TrainJob %s: no %s in this pod", name, ", ".join(missing))
        return None
    host = f"[{host}]" if ":" in host else host  # an IPv6 service address
    return Target(f"https://{host}:{port}", str(ca), str(token), namespace, name)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: float) -> str:
    return f"{value:.6g}"


def trainer_status(
    step: int,
    max_steps: int,
    remaining_s: float | None,
    loss: float | None,
    tokens_per_s: float | None,
    at_epoch_s: float,
) -> dict:
    """`status.trainerStatus` as the CRD has it. An unknown value is null: in a merge patch that
    removes what an earlier report said, instead of leaving it stale."""
    percent = max(0, min(100, math.floor(100 * step / max_steps))) if max_steps > 0 else None
    remaining = None if remaining_s is None else max(0, min(INT32_MAX, round(remaining_s)))
    metrics = []
    if loss is not None and math.isfinite(loss):
        metrics.append({"name": "loss", "value": _number(loss)})
    if tokens_per_s is not None and math.isfinite(tokens_per_s):
        metrics.append({"name": "tokens_per_second", "value": _number(tokens_per_s)})
    metrics += [{"name": "step", "value": str(step)}, {"name": "total_steps", "value": str(max_steps)}]
    return {
        "progressPercentage": percent,
        "estimatedRemainingSeconds": remaining,
        "metrics": metrics,
        "lastUpdatedTime": rfc3339(at_epoch_s),
    }


class TrainJobProgress:
    """The metrics backend that reports to the TrainJob (see the module's docstring)."""

    def __init__(
        self,
        target: Target,
        max_steps: int,
        every_s: float = 30.0,
        timeout_s: float = TIMEOUT_S,
        warn_every_s: float = WARN_EVERY_S,
    ):
        self.target, self.max_steps, self.every_s = target, max_steps, every_s
        self.timeout_s, self.warn_every_s = timeout_s, warn_every_s
        self.sent = 0  # patches the server accepted
        self.failed = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._pending: dict | None = None  # the latest status not yet sent
        self._scheduled_at: float | None = None  # monotonic time of the last report scheduled
        self._first: tuple[float, int] | None = None  # (monotonic time, step) of the first step seen
        self._loss: float | None = None
        self._tokens_per_s: float | None = None
        self._warned_at: float | None = None
        self._unwarned = 0  # failures since the last warning line
        self._thread = threading.Thread(target=self._run, name="trainjob-progress", daemon=True)
        self._thread.start()

    # ---- the training side: record, never wait ---------------------------------------------------

    def log(self, metrics: dict, step: int) -> None:
        now = time.monotonic()
        loss = metrics.get(names.LOSS.name)
        if isinstance(loss, dict):
            self._loss = loss.get("all", self._loss)
        if names.TOKENS_PER_SECOND.name in metrics:
            self._tokens_per_s = metrics[names.TOKENS_PER_SECOND.name]
        if self._first is None:
            self._first = (now, step)
        t0, s0 = self._first
        remaining = (now - t0) / (step - s0) * (self.max_steps - step) if step > s0 else None
        if step >= self.max_steps:
            remaining = 0.0
        status = trainer_status(step, self.max_steps, remaining, self._loss, self._tokens_per_s, time.time())
        final = step >= self.max_steps
        with self._lock:
            self._pending = status
            due = self._scheduled_at is None or now - self._scheduled_at >= self.every_s
            if due or final:
                self._scheduled_at = now
                self._wake.set()

    def close(self) -> None:
        """Send what is still pending (the stage's last step) within the patch timeout, then stop."""
        with self._lock:
            self._closing = True
            self._wake.set()
        self._thread.join(self.timeout_s + 1.0)

    # ---- the reporting thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                status, self._pending = self._pending, None
                closing = self._closing
            if status is not None:
                self._send(status)
            if closing:
                return

    def _send(self, status: dict) -> None:
        try:
            self._patch({"status": {"trainerStatus": status}})
        except Exception as e:  # whatever the server or the network does, training goes on
            self._failed(_why(e))
        else:
            self.sent += 1

    def _patch(self, body: dict) -> None:
        token = Path(self.target.token_file).read_text().strip()  # rotated by the kubelet
        context = ssl.create_default_context(cafile=self.target.ca_file)
        request = urllib.request.Request(
            self.target.server + self.target.path,
            data=json.dumps(body).encode(),
            method="PATCH",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
                "User-Agent": "motif-trainjob-progress",
            },
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as answer:
            answer.read()

    def _failed(self, why: str) -> None:
        self.failed += 1
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < self.warn_every_s:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more failures since the last warning)" if self._unwarned else ""
        log.warning("trainjob progress: cannot patch %s: %s%s; training continues", self.target.what, why, more)
        self._warned_at, self._unwarned = now, 0


def _why(error: Exception) -> str:
    """One line: the status and the server's message for a refusal, else the error itself."""
    if isinstance(error, urllib.error.HTTPError):
        try:
            message = json.loads(error.read() or b"{}").get("message", "")
        except (ValueError, AttributeError, OSError):
            message = ""
        detail = f" ({' '.join(str(message).split())[:300]})" if message else ""
        return f"{error.code} {error.reason}{detail}"
    if isinstance(error, urllib.error.URLError):
        return f"{error.reason}"
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


def from_env(max_steps: int, every_s: float) -> TrainJobProgress | None:
    """The reporter for this pod's TrainJob, or None when it runs under none."""
    target = target_from_env()
    if target is None:
        return None
    log.info("trainjob progress: reporting to %s every %gs", target.what, every_s)
    return TrainJobProgress(target, max_steps, every_s)
