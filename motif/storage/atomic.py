"""A directory written whole or not at all, that replaces only a checkpoint of ours.

`atomic_dir(dst, overwrite)` yields a hidden temporary directory beside `dst`; when the block
completes, every file is fsynced and the directory is renamed onto `dst`.

Why it is built this way:

* **Never half a checkpoint.** Readers see the old destination or the complete new one: the new
  one becomes visible by one rename in the same directory, after its files are durable.
* **Never delete what is not ours.** An existing destination is replaced only when it is a
  checkpoint directory, recognised by its own files (`config.json` naming a model, and
  safetensors weights), and contains none of the command's sources. A parent of the source, a
  home directory, a data directory, a training checkpoint root: each is refused with one line
  before anything is written, whatever `overwrite` says. An empty directory holds nothing and
  may be replaced.
* **Leftovers are ours to remove, and only ours.** Each temporary directory holds a marker file
  naming its writer. A caller that holds the destination's lease (`motif.storage.lease`) passes
  it, and the hidden leftovers of earlier, killed writers of that same destination (marker
  present, writer gone) are removed first, so a killed 200 GB grow does not fill the volume
  on its rerun. Without a lease nothing is removed: another host's live writer could own it.
* **A lost lease commits nothing.** With a lease, it is checked right before the rename.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from motif.errors import CheckpointError, WriteError

if TYPE_CHECKING:
    from motif.storage.lease import Lease

log = logging.getLogger(__name__)

DIR_MODE = 0o755
MARKER = ".motif-partial"  # inside every temporary directory until its rename
_CONFIG = "config.json"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_problem(path: Path) -> str | None:
    """None when `path` is a model checkpoint directory (motif's or Hugging Face's), else why not."""
    if not path.is_dir():
        return "is not a directory"
    try:
        names = {p.name for p in path.iterdir()} - {MARKER}  # a temporary directory of ours counts as empty
    except OSError as e:
        return f"cannot be listed ({e.strerror or e})"
    if not names:
        return None  # empty: nothing to lose
    if _CONFIG not in names:
        return "is not a checkpoint directory (no config.json)"
    try:
        config = json.loads((path / _CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "is not a checkpoint directory (its config.json is not JSON)"
    if not isinstance(config, dict) or not ({"model_type", "architectures"} & set(config)):
        return "is not a checkpoint directory (its config.json names no model_type)"
    if not any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        return "is not a checkpoint directory (no safetensors weights)"
    return None


def check_replaceable(dst: str | Path, overwrite: bool, sources: Iterable[str | Path] = ()) -> None:
    """Raise CheckpointError unless writing `dst` can lose nothing but an old checkpoint there."""
    dst = Path(dst)
    target = Path(os.path.realpath(dst))
    for source in sources:
        src = Path(os.path.realpath(source))
        if target == src:
            raise CheckpointError(f"{dst}: is the source {source}; the output must be another directory")
        if target in src.parents:
            raise CheckpointError(
                f"{dst}: contains the source {source}; it is never replaced (that would delete the source)"
            )
    if not (dst.exists() or dst.is_symlink()):
        return
    if not overwrite:
        raise CheckpointError(f"{dst}: already exists (pass overwrite to replace it)")
    problem = checkpoint_problem(target)
    if problem:
        raise CheckpointError(
            f"{dst}: exists and {problem}; only a checkpoint directory is replaced: choose another destination"
        )


@contextlib.contextmanager
def atomic_dir(
    dst: str | Path, overwrite: bool, *, sources: Iterable[str | Path] = (), lease: Lease | None = None
) -> Iterator[Path]:
    """Yield a temporary directory that replaces `dst` only if the block completes.

    `sources`: directories the block reads; `dst` must not be or contain one. `lease`: the held
    lease of `dst` (removes earlier writers' leftovers; checked before the rename).
    """
    dst = Path(dst)
    sources = list(sources)
    check_replaceable(dst, overwrite, sources)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if lease is not None:
        remove_leftovers(dst)
    tmp = _new_partial(dst)
    try:
        yield tmp
        (tmp / MARKER).unlink(missing_ok=True)  # a nested atomic_dir onto `tmp` replaced it already
        for path in tmp.iterdir():  # durable before it becomes visible
            fsync_path(path)
        fsync_path(tmp)
        if lease is not None:
            lease.check()
        check_replaceable(dst, overwrite, sources)  # the destination may have changed meanwhile
        _replace(tmp, dst)
    except (OSError, _safetensor_error()) as e:  # a full disk or a failing volume: one line, not a traceback
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.strerror:  # a write to an fd names no file
            reason = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        else:
            reason = str(e)
        kept = "its previous contents are untouched" if dst.exists() else "nothing was written there"
        raise WriteError(f"{dst}: cannot write ({reason}); the partial write was removed, {kept}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, dst: Path) -> None:
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(dst, old)
    os.rename(tmp, dst)
    fsync_path(dst.parent)
    if old is None:
        return
    try:
        if old.is_symlink() or not old.is_dir():
            old.unlink()  # a link to a checkpoint: the link goes, what it pointed to stays
        else:
            shutil.rmtree(old)
    except OSError as e:  # the new output is in place; say what is left behind
        log.warning("%s: the replaced checkpoint is left at %s (%s)", dst, old, e.strerror or e)


def _new_partial(dst: Path) -> Path:
    """A temporary directory that carries our marker from the moment it has its `.partial-` name:
    made under a `.new-` name, marked, then renamed (a kill in between leaves an empty `.new-`)."""
    from motif.storage.lease import _boot_id, _start_ticks

    new = Path(tempfile.mkdtemp(prefix=f".{dst.name}.new-", dir=dst.parent))
    try:
        os.chmod(new, DIR_MODE)
        marker = {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid())}
        (new / MARKER).write_text(json.dumps({**marker, "boot": _boot_id()}) + "\n")
        tmp = new.with_name(new.name.replace(".new-", ".partial-", 1))
        os.rename(new, tmp)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return tmp


def remove_leftovers(dst: Path) -> list[Path]:
    """Remove hidden temporary directories of earlier writers of `dst` whose writer is gone.

    Only directories named like ours that hold our marker are touched; call it holding the lease
    of `dst` (every writer of `dst` holds it, so no live writer can own them).
    """
    from motif.storage.lease import _boot_id, _start_ticks

    removed = []
    for path in dst.parent.glob(f".{dst.name}.new-*"):  # a kill before a partial got its name
        with contextlib.suppress(OSError):
            if {p.name for p in path.iterdir()} <= {MARKER}:
                shutil.rmtree(path)
                removed.append(path)
    for path in dst.parent.glob(f".{dst.name}.partial-*"):
        try:
            marker = json.loads((path / MARKER).read_text())
        except (OSError, ValueError):
            continue  # not ours (no marker), or being renamed: leave it
        if not isinstance(marker, dict):
            continue
        here = marker.get("host") == socket.gethostname() and marker.get("boot") == _boot_id()
        pid = marker.get("pid")
        if here and isinstance(pid, int) and _start_ticks(pid) == marker.get("start"):
            continue  # its writer still runs on this host (not under the lease): leave it
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        log.info("%s: removed the leftover of an interrupted write: %s", dst, path.name)
    return removed


def _safetensor_error() -> type[BaseException]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        return OSError
    return SafetensorError
