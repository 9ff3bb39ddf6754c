"""The page cache, for benchmarks that time reads from the disk: dropped only where this process may."""

from __future__ import annotations

import os
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def can_drop() -> bool:
    """Whether this process may drop the page cache (root)."""
    return os.access(DROP_CACHES, os.W_OK)


def drop() -> None:
    """Write back what is dirty (not to be billed to the next run), then drop every clean page."""
    os.sync()
    DROP_CACHES.write_text("3\n")
