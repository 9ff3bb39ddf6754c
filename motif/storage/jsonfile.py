"""Small JSON and text files of a checkpoint: read with one error naming the file, written private.

A record a command relies on (checksums.json, growth.json, trained.json, config.json) that cannot
be read is a CheckpointError naming the file and why, never a traceback and never silently skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from motif.errors import CheckpointError


def read_json(path: Path, *, missing_ok: bool = False) -> Any:
    """The parsed file; None when it is absent and `missing_ok` (else a CheckpointError)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable or not JSON: {' '.join(str(e).split())}") from None


def write_text(path: Path, text: str, mode: int) -> None:
    """Create or truncate `path` with exactly `mode` (whatever the umask), holding `text`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
