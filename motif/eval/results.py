"""What `motif eval` leaves behind: lm-eval's results JSON, samples, and one `summary.json`.

`summary.json` is the file the dashboards' push and the demo read:

    {"stage", "checkpoint", "tasks": {task: {metric: value}}, "heldout": {language: bits_per_byte},
     "finished": ISO-8601 time, "motif_version", "lm_eval_version", "request", "checkpoint_id"}

It is written last, by rename, so its presence means the evaluation finished; `request` and
`checkpoint_id` say what was evaluated, so a rerun with the same request on the same checkpoint
reuses it instead of evaluating again (the eval Job of a stage is idempotent).

On a cluster `motif status` cannot read the volume `summary.json` is on, so the scores also leave
as the eval container's termination message (`termination_message`), which the kubelet copies
into the pod's status.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from motif.model.checkpoint import CONFIG_NAME

SUMMARY = "summary.json"
RESULTS = "lm-eval-results.json"
TERMINATION_MESSAGE_BYTES = 4096  # the kubelet keeps no more of a container's termination message


def flatten(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """`{task: {metric: value}}` from lm-eval's results: numeric values only, filter suffix `,none` dropped."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.get("results", {}).items():
        row = {}
        for key, value in metrics.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, int | float):
                continue  # alias, name, sample_len, and "N/A" stderr
            metric, filt = key.split(",", 1)
            row[metric if filt == "none" else key] = float(value)
        if row:
            out[task] = row
    return out


CHECKSUMS = "checksums.json"  # what motif's save records: every file's size and xxh3 checksum
CHUNK = 8 << 20


def checkpoint_id(path: str | Path) -> str:
    """Identity of a checkpoint's contents: config.json's bytes, then the content record motif
    writes with every checkpoint (`checksums.json`: each file's xxh3), or, for a checkpoint without
    one (downloaded, converted), every weight file's bytes hashed here."""
    path = Path(path)
    h = hashlib.sha256((path / CONFIG_NAME).read_bytes())
    record = path / CHECKSUMS
    if record.is_file():
        h.update(record.read_bytes())
        for file in sorted(path.glob("*.safetensors*")):  # a file swapped without its record
            h.update(f"{file.name}:{file.stat().st_size}".encode())
    else:
        for file in sorted(path.glob("*.safetensors*")):
            h.update(f"{file.name}:{content_hash(file)}".encode())
    return h.hexdigest()[:16]


def content_hash(file: Path) -> str:
    """xxh3-64 of a file's bytes (several GB/s: the held-out and task files are small)."""
    import xxhash

    h = xxhash.xxh3_64()
    with file.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def files_id(paths: list[Path | str]) -> str:
    """Identity of the contents of files, directories (every file under them) or globs: each
    file's name and bytes. Edited task YAMLs, local task data, held-out text or a tokenizer make a
    new identity even when their sizes and times are kept."""
    import glob

    h = hashlib.sha256()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files = [path]
        else:
            files = sorted(Path(p) for p in glob.glob(str(given), recursive=True) if Path(p).is_file())
        h.update(f"{given}\0".encode())
        for file in files:
            h.update(f"{file}:{content_hash(file)}\0".encode())
    return h.hexdigest()[:16]


def read_summary(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / SUMMARY).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def reusable(out: Path, request: dict[str, Any], ckpt_id: str) -> dict[str, Any] | None:
    """The finished summary in `out` when it answers the same request on the same checkpoint."""
    summary = read_summary(out)
    if summary and summary.get("request") == request and summary.get("checkpoint_id") == ckpt_id:
        return summary
    return None


def make_summary(
    stage: str | None,
    checkpoint: Path,
    tasks: dict[str, dict[str, float]],
    heldout: dict[str, float],
    request: dict[str, Any],
    ckpt_id: str,
) -> dict[str, Any]:
    from importlib.metadata import version

    from motif import __version__

    return {
        "stage": stage,
        "checkpoint": str(checkpoint),
        "tasks": tasks,
        "heldout": heldout,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "motif_version": __version__,
        "lm_eval_version": version("lm_eval"),
        "request": request,
        "checkpoint_id": ckpt_id,
    }


def termination_message(summary: dict[str, Any], limit: int = TERMINATION_MESSAGE_BYTES) -> str:
    """The summary's scores as compact JSON of at most `limit` bytes:
    `{"stage", "scores": {task: {metric: value}}, "heldout": {language: bits_per_byte}}`.

    Too long (hundreds of subtasks), it drops tasks from the end, then held-out languages, and says
    `"truncated": true`: a partial report beats a message the kubelet cuts into invalid JSON.
    """
    scores, heldout = dict(summary["tasks"]), dict(summary.get("heldout") or {})
    message: dict[str, Any] = {"stage": summary.get("stage"), "scores": scores, "heldout": heldout}
    text = _compact(message)
    while len(text.encode()) > limit and (scores or heldout):
        (scores or heldout).popitem()
        message["truncated"] = True
        text = _compact(message)
    return text


def _compact(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def write_results(out: Path, results: dict[str, Any] | None, summary: dict[str, Any]) -> list[Path]:
    """lm-eval's results (and samples), then summary.json last; each file by write-then-rename."""
    from lm_eval.utils import handle_non_serializable

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if results is not None:
        samples = results.pop("samples", None) or {}
        written.append(_write(out / RESULTS, json.dumps(results, indent=2, default=handle_non_serializable)))
        for task, rows in samples.items():
            lines = "".join(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows)
            written.append(_write(out / f"samples_{task}.jsonl", lines))
    written.append(_write(out / SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False)))
    return written


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---- tables -------------------------------------------------------------------------------------


def table(summary: dict[str, Any]) -> str:
    """Scores and held-out bits per byte as an aligned text table."""
    rows = [["task", "metric", "value", "stderr"]]
    for task, metrics in summary["tasks"].items():
        for metric, value in metrics.items():
            if metric.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{metric}_stderr")
            rows.append([task, metric, f"{value:.4f}", "" if stderr is None else f"±{stderr:.4f}"])
    for lang, bpb in summary.get("heldout", {}).items():
        rows.append([f"held-out {lang}", "bits_per_byte", f"{bpb:.4f}", ""])
    return render(rows)


def render(rows: list[list[str]], left: int = 2) -> str:
    """Aligned columns, a rule under the header; the first `left` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = enumerate(zip(row, widths, strict=True))
        lines.append("  ".join(c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
