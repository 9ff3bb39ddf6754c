"""The Kubernetes API as `motif status` and `motif preflight` use it: read-only GETs that return
plain dicts, each with a connect and a read timeout and no retry, all under one overall deadline.

A read timeout bounds one wait for bytes; a server that trickles a byte now and then never trips
it, so every command's calls also share a deadline (`with_deadline`). A refusal names the verb,
the resource and the namespace it was refused (`Refused`); an answer that is not JSON is one line
naming the path, never a traceback. Answers are parsed from the raw body (json.loads) instead of
going through the client's models: a list of 100k pods is read in one pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from motif.errors import MotifError

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 20.0
DEADLINE_S = 60.0  # all the calls of one command together

T = TypeVar("T")


class Refused(MotifError):
    """The API server answered a read with an error status (403, 401, 404, 5xx)."""

    def __init__(self, status: int, reason: str, verb: str, resource: str, namespace: str | None, detail: str = ""):
        self.status, self.reason, self.verb, self.resource, self.namespace = status, reason, verb, resource, namespace
        where = f" in namespace {namespace}" if namespace else " (cluster-wide)"
        extra = f": {detail}" if detail else ""
        super().__init__(f"the API server refused to {verb} {resource}{where}: {status} {reason}{extra}")


# ---- configuration -------------------------------------------------------------------------------


def load_config(context: str | None) -> str:
    """Configure the kubernetes client; returns the context's default namespace. A kubeconfig that
    cannot be read or makes no sense is one line naming it (MotifError), never a traceback."""
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST") and not context and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
        namespace = "default"
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                namespace = f.read().strip()
        except OSError:
            pass
    else:
        namespace = _load_kubeconfig(context)
    _configure_client(client)
    return namespace


def _load_kubeconfig(context: str | None) -> str:
    from kubernetes import config

    # KUBECONFIG is read here, not when the kubernetes package was imported.
    kubeconfig = os.environ.get("KUBECONFIG") or None
    where = kubeconfig or "~/.kube/config"
    try:
        config.load_kube_config(config_file=kubeconfig, context=context)
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError) as e:
        detail = " ".join(str(e).split())
        raise MotifError(f"no cluster to talk to: {where}: {detail} (set KUBECONFIG or --context)") from None
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        detail = " ".join(str(e).split())[:200]
        raise MotifError(
            f"{where}: not a usable kubeconfig ({type(e).__name__}: {detail}); expected a Config with "
            "clusters, users, contexts and current-context"
        ) from None
    if context:
        current = next((c for c in contexts if c["name"] == context), current)
    if not isinstance(current, dict):
        raise MotifError(f"{where}: current-context: no such context; expected one of its contexts' names")
    return (current.get("context") or {}).get("namespace") or "default"


def _configure_client(client) -> None:
    """No retries (a timeout ends the command), and one line instead of a urllib3 warning per
    request when the kubeconfig skips TLS verification."""
    from urllib3.exceptions import InsecureRequestWarning

    cfg = client.Configuration.get_default_copy()
    cfg.retries = False
    client.Configuration.set_default(cfg)
    if not cfg.verify_ssl and cfg.host.startswith("https"):
        warnings.simplefilter("ignore", InsecureRequestWarning)
        print(
            f"warning: TLS verification of {cfg.host} is off (insecure-skip-tls-verify in the kubeconfig)",
            file=sys.stderr,
        )


def timeout() -> tuple[float, float]:
    """(connect, read) seconds of every API call."""
    return (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)


def add_connection_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--context and --timeout, as every command that talks to the API server takes them."""
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEADLINE_S,
        metavar="SECONDS",
        help=f"give up when the API server has not answered every {what} within SECONDS (default {DEADLINE_S:g})",
    )


def positive_seconds(text: str) -> float:
    """argparse type of --timeout."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r}; expected a number of seconds > 0")
    return value


# ---- the overall deadline ------------------------------------------------------------------------


def with_deadline(work: Callable[[], T], seconds: float = DEADLINE_S) -> T:
    """`work()` (the API calls of one command), or one line when it has not finished in `seconds`.
    It runs in a daemon thread: a call stuck on a trickling server is left behind when the command
    exits, as closing its socket from here would race the read."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    worker = threading.Thread(target=target, name="kube-api", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        host = _host()
        raise MotifError(
            f"the API server{f' {host}' if host else ''} did not finish answering within {seconds:g}s "
            "(overall deadline; --timeout)"
        )
    if "error" in result:
        raise result["error"]
    return result["value"]


def _host() -> str:
    from kubernetes import client

    return client.Configuration.get_default_copy().host or ""


# ---- reads ---------------------------------------------------------------------------------------


def api_path(group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None) -> str:
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


class Reader:
    """GETs against the configured cluster (load_config first), answers as dicts."""

    def __init__(self):
        from kubernetes import client

        self.api = client.ApiClient()

    def get(self, group: str, version: str, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self._call("get", group, plural, namespace, api_path(group, version, plural, namespace, name), [])

    def list(
        self, group: str, version: str, plural: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        answer = self._call("list", group, plural, namespace, api_path(group, version, plural, namespace), query)
        items = answer.get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise MotifError(
                f"{api_path(group, version, plural, namespace)}: the API server's answer has no items list"
            )
        return items

    def _call(self, verb: str, group: str, plural: str, namespace: str | None, path: str, query: list) -> dict:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        resource = f"{plural}.{group}" if group else plural
        try:
            response = self.api.call_api(
                path,
                "GET",
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=timeout(),
            )
            body = response.data
        except ApiException as e:
            raise Refused(e.status, e.reason or "", verb, resource, namespace, _message(e.body)) from None
        except HTTPError as e:
            raise MotifError(f"cannot reach the API server: {reason(e)}") from None
        try:
            answer = json.loads(body)
        except ValueError as e:  # UnicodeDecodeError is a ValueError too
            raise MotifError(
                f"{path}: the API server's answer is not JSON ({e}); expected a Kubernetes object"
            ) from None
        if not isinstance(answer, dict):
            raise MotifError(f"{path}: the API server's answer is a JSON {type(answer).__name__}, not an object")
        return answer


def _message(body: Any) -> str:
    """The `message` of a Status body, on one line and short."""
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, TypeError, AttributeError):
        return ""
    return " ".join(str(message).split())[:300]


def reason(error: Exception) -> str:
    """The innermost reason of a urllib3 error, on one line (a timeout says which and how long)."""
    why = getattr(error, "reason", None) or error
    text = " ".join(str(why).split())
    text = text.split(">: ", 1)[-1]  # urllib3 prefixes the connection object's repr
    pool = getattr(error, "pool", None)
    host = f"{getattr(pool, 'host', '')}:{getattr(pool, 'port', '')}" if getattr(pool, "host", None) else ""
    return f"{host}: {text}" if host else text
