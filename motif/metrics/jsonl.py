"""JSONL backend: one JSON object per `log` call, keys are metric names from `motif.metrics.names`.

Line-buffered appends of a few hundred bytes per step: cheap, and a resumed run appends to the
same file, so the file tells the whole story of a stage including its restarts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from motif.metrics.logger import Value


class JsonlBackend:
    """Opened at the first record: a run refused during set-up (bad data, a busy directory) leaves no file."""

    def __init__(self, path: str | Path, static: dict | None = None):
        self.path = Path(path)
        self.static = static or {}
        self._file = None

    def log(self, metrics: dict[str, Value], step: int) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", buffering=1, encoding="utf-8")
        record = {"time": round(time.time(), 3), "step": step, **self.static, **metrics}
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read(path: str | Path) -> list[dict]:
    """All records of a JSONL metrics log (a torn last line, from a killed run, is ignored)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
