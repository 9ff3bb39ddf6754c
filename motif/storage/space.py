"""Preflight checks of a destination: enough free space, and the right to write there.

Why it is built this way:

* **Before the first byte.** A grow or a final write knows its whole output size up front, so a
  volume that cannot hold it is refused in milliseconds instead of failing after an hour with a
  partial directory to clean up. Training calls `check_writable` before the first step, not at
  the first checkpoint.
* **The nearest existing ancestor.** A destination usually does not exist yet; what matters is
  the filesystem and the directory that will receive it, so both checks walk up to the nearest
  directory that exists.
* **A real probe, not `os.access`.** `access(2)` answers for the caller's UID on the client: NFS
  with root squash, read-only bind mounts and ACLs make it say yes where a write fails. A file
  created with O_EXCL and removed at once is what a write does; it leaves nothing behind.
* **A margin.** Filesystems reserve blocks and account metadata; 1% (at least 1 MB) above the
  payload keeps "fits exactly" from failing at the last shard.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from motif.errors import WriteError

MARGIN_FRACTION = 0.01
MARGIN_MIN_BYTES = 1 << 20


def existing_ancestor(path: str | Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    st = os.statvfs(existing_ancestor(path))
    return st.f_bavail * st.f_frsize


def check_free_space(path: str | Path, nbytes: int, what: str) -> None:
    """Refuse (WriteError, one line) when the filesystem of `path` cannot hold `nbytes` more."""
    need = nbytes + max(int(nbytes * MARGIN_FRACTION), MARGIN_MIN_BYTES)
    try:
        free = free_bytes(path)
    except OSError as e:
        raise WriteError(f"{path}: cannot check free space: {e.strerror or e}") from None
    if free < need:
        raise WriteError(
            f"{path}: not enough free space for {what}: needs {human(need)}, "
            f"{human(free)} free on {existing_ancestor(path)}; free space or choose another volume"
        )


def check_writable(path: str | Path, key: str, replaced: bool = True) -> None:
    """Refuse (WriteError naming `key`) when `path` cannot be created or replaced by this process.

    Probes the directory that receives new entries: the nearest existing ancestor of `path`'s
    parent (a replaced directory is renamed in its parent; a lease file sits beside it) and, when
    `path` is an existing directory, `path` itself (checkpoints are written inside it). With
    `replaced` false (a directory only ever written into) an existing `path` is all that is probed:
    its parent may be read-only, as a stage's own checkpoint directory mounted alone on a read-only
    volume.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(f"{key}: {path}: exists and is not a directory")
    targets = [path] if path.is_dir() and not replaced else [existing_ancestor(path.parent)]
    if path.is_dir() and replaced:
        targets.append(path)
    for target in targets:
        if not target.is_dir():
            raise WriteError(f"{key}: {path}: cannot be created: {target} is not a directory")
        probe = target / f".motif-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise WriteError(f"{key}: {path}: cannot write in {target} ({e.strerror or e})") from None
        os.close(fd)
        os.unlink(probe)


def human(nbytes: int) -> str:
    """Bytes for people: 1.5 GiB, 512 MiB, 4 KiB."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


# ---- memory --------------------------------------------------------------------------------------


def available_memory() -> int:
    """Bytes this process can still allocate: the kernel's MemAvailable, capped by the cgroup's
    limit (a pod's memory limit is a cgroup limit; exceeding it is an OOM kill, not an error)."""
    available = _meminfo_available()
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            available = min(available, max(limit - usage, 0))
            break
    return available


def check_memory(nbytes: int, what: str) -> None:
    """Refuse (a MemoryError-free, one-line MotifError) work that needs more memory than is left."""
    from motif.errors import MotifError

    free = available_memory()
    if nbytes > free:
        raise MotifError(f"{what}: needs {human(nbytes)} of memory, {human(free)} available; refused before starting")


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
