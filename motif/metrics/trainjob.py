"""Training progress in the TrainJob's `status.trainerStatus` (Kubeflow Trainer v2, trainer.kubeflow.org/v1alpha1).

A metrics backend of rank 0: from the steps it is told of it keeps the progress percentage, the
estimated remaining seconds, a few metrics (loss, tokens per second, step, total steps) and the
time of the last update, and a background thread sends them for the TrainJob the pod runs under,
at most once every `every_s` seconds (and once more when the stage ends). The field names are
those of the TrainJob CRD (`TrainJobTrainerStatus`, KEP-2779).

Two routes, the first one the pod has:
- Kubeflow Trainer's own (KEP-2779; the controller's TrainJobStatus feature gate): the controller
  injects KUBEFLOW_TRAINER_STATUS_URL, _CA_CERT and _TOKEN (its status server, the CA that signs
  it, a projected token for the audience trainer.kubeflow.org) and the reporter POSTs
  `{"trainerStatus": ...}` there; the controller checks the token and writes the status.
- The chart's (trainJob.progress.enabled), for a controller without that gate: the chart names the
  TrainJob (MOTIF_TRAINJOB_NAME, and MOTIF_TRAINJOB_NAMESPACE or the service account's namespace),
  mounts a projected ServiceAccount token and its CA, and grants a Role to patch that TrainJob's
  status; the reporter merge-patches the `status` subresource at KUBERNETES_SERVICE_HOST/PORT.

Tokens are re-read for each request, as the kubelet rotates them. Training never waits for a server
and never fails because of one: `log()` only records, the request runs on its own thread, and a
refused or failed one is one warning line (at most one every `warn_every_s`), training going on.

Standard library only: no kubernetes client, no torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
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
# What Kubeflow Trainer's controller injects into a TrainJob's pods with its TrainJobStatus gate on.
ENV_STATUS_URL = "KUBEFLOW_TRAINER_STATUS_URL"
ENV_STATUS_CA_CERT = "KUBEFLOW_TRAINER_STATUS_CA_CERT"
ENV_STATUS_TOKEN = "KUBEFLOW_TRAINER_STATUS_TOKEN"
STATUS_PATH = re.compile(r"/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs/([^/]+)/status$")
TIMEOUT_S = 5.0  # one request; the training loop never waits for it
WARN_EVERY_S = 600.0
INT32_MAX = 2**31 - 1  # estimatedRemainingSeconds is an int32

API_SERVER = "api-server"  # the chart's route: merge patch of the status subresource
STATUS_SERVER = "status-server"  # Kubeflow Trainer's route: POST to its status server


@dataclass(frozen=True)
class Target:
    """Where the status goes and with which credentials."""

    url: str  # the status endpoint
    ca_file: str
    token_file: str
    namespace: str
    name: str
    route: str = API_SERVER

    @property
    def what(self) -> str:
        via = " via Kubeflow Trainer's status server" if self.route == STATUS_SERVER else ""
        return f"trainjobs/status {self.name} in namespace {self.namespace}{via}"


def api_server_url(server: str, namespace: str, name: str) -> str:
    return f"{server}/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs/{name}/status"


def target_from_env(environ=None, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> Target | None:
    """The TrainJob of this pod and the route to it, or None when the pod runs under none (the
    reporter is then off). Kubeflow Trainer's injected status server comes first."""
    env = os.environ if environ is None else environ
    return status_server_target(env) or api_server_target(env, sa_dir)


def status_server_target(env) -> Target | None:
    """Kubeflow Trainer's status server (KEP-2779), when its controller injected one; a partial
    injection says what is missing in one warning."""
    url = env.get(ENV_STATUS_URL, "").strip()
    if not url:
        return None
    ca, token = env.get(ENV_STATUS_CA_CERT, "").strip(), env.get(ENV_STATUS_TOKEN, "").strip()
    missing = [what for what, path in ((ENV_STATUS_CA_CERT, ca), (ENV_STATUS_TOKEN, token)) if not Path(path).is_file()]
    if missing:
        log.warning(
            "trainjob progress: %s is set but %s names no file in this pod", ENV_STATUS_URL, " or ".join(missing)
        )
        return None
    found = STATUS_PATH.search(url.split("?")[0])
    namespace, name = found.groups() if found else ("?", "?")
    return Target(url, ca, token, namespace, name, STATUS_SERVER)


def api_server_target(env, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> Target | None:
    """The API server and the TrainJob the chart names; a pod that names a TrainJob but lacks the
    API server or the token says so in one warning."""
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
    return Target(api_server_url(f"https://{host}:{port}", namespace, name), str(ca), str(token), namespace, name)


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
        self.sent = 0  # reports the server accepted
        self.failed = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._pending: dict | None = None  # the latest status not yet sent
        self._scheduled_at: float | None = None  # monotonic time of the last report scheduled
        self._first: tuple[float, int] | None = None  # (monotonic time, step) of the first step seen
        self._loss: float | None = None
        self._tokens_per_s: float | None = None
        self._last_news: dict | None = None  # the last status recorded, less its time
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
        if self._first is None and names.STEP.name in metrics:
            # The rate is timed from the first step logged, so the start's held-out scoring and the
            # first step's warm-up do not weigh on the estimate.
            self._first = (now, step)
        remaining = None
        if self._first is not None and step > self._first[1]:
            t0, s0 = self._first
            remaining = (now - t0) / (step - s0) * (self.max_steps - step)
        if step >= self.max_steps:
            remaining = 0.0
        status = trainer_status(step, self.max_steps, remaining, self._loss, self._tokens_per_s, time.time())
        news = {k: v for k, v in status.items() if k != "lastUpdatedTime"}
        if news == self._last_news:  # e.g. the held-out scores after the last step: nothing new to report
            return
        self._last_news = news
        final = step >= self.max_steps
        with self._lock:
            self._pending = status
            due = self._scheduled_at is None or now - self._scheduled_at >= self.every_s
            if due or final:
                self._scheduled_at = now
                self._wake.set()

    def close(self) -> None:
        """Send what is still pending (the stage's last step) within the request timeout, then stop."""
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
            token = Path(self.target.token_file).read_text().strip()  # rotated by the kubelet
            context = ssl.create_default_context(cafile=self.target.ca_file)
            with urllib.request.urlopen(
                request(self.target, status, token), timeout=self.timeout_s, context=context
            ) as r:
                r.read()
        except Exception as e:  # whatever the server or the network does, training goes on
            self._failed(_why(e))
        else:
            self.sent += 1

    def _failed(self, why: str) -> None:
        self.failed += 1
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < self.warn_every_s:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more failures since the last warning)" if self._unwarned else ""
        log.warning("trainjob progress: cannot update %s: %s%s; training continues", self.target.what, why, more)
        self._warned_at, self._unwarned = now, 0


def request(target: Target, status: dict, token: str) -> urllib.request.Request:
    """The request that reports `status` by the target's route. The status server takes the
    trainerStatus alone (unknown fields left out) and applies it whole; the API server takes a merge
    patch, in which an unknown field is null so that it removes what an earlier report said."""
    if target.route == STATUS_SERVER:
        method, content_type = "POST", "application/json"
        body = {"trainerStatus": {k: v for k, v in status.items() if v is not None}}
    else:
        method, content_type = "PATCH", "application/merge-patch+json"
        body = {"status": {"trainerStatus": status}}
    return urllib.request.Request(
        target.url,
        data=json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": content_type,
            "Accept": "application/json",
            "User-Agent": "motif-trainjob-progress",
        },
    )


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
