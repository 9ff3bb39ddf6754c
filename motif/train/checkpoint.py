"""Periodic training checkpoints: atomic, self-describing, pruned to the last K.

Why it is built this way:
- A checkpoint is a directory `step_NNNNNNNN` that appears only complete. Every rank writes its
  files into `.step_NNNNNNNN.tmp`, rank 0 waits for all of them (a barrier), fsyncs, writes
  `meta.json` last (listing every file with its size) and renames the directory. A job killed at
  any moment leaves either the previous checkpoints untouched or a stale `.tmp` that the next save
  removes; `latest()` also re-checks the sizes in `meta.json`, so a directory damaged later (a
  copy cut short, a truncated file) is skipped with a warning instead of crashing the resume.
- Weights and optimizer moments are safetensors; small state (step, data position, RNG, mask)
  is JSON. Nothing is pickled, so a checkpoint from shared storage cannot execute code.
- Rank-local state (data position, RNG) is one file per rank: each rank reads its own shard.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from motif.errors import CheckpointError, WriteError
from motif.model.checkpoint import fsync_path
from motif.train.dist import World, barrier

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d{8})$")
META = "meta.json"
FORMAT = "motif-train-checkpoint/1"
# What a full disk or a failing volume raises while writing (safetensors wraps the OSError).
WRITE_ERRORS = (OSError, SafetensorError)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def check_complete(path: Path) -> str | None:
    """None if `path` is a complete checkpoint, else why not."""
    meta_file = path / META
    if not meta_file.is_file():
        return "no meta.json (the write did not finish)"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable meta.json: {e}"
    if meta.get("format") != FORMAT:
        return f"unknown format {meta.get('format')!r}"
    for name, size in meta.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"missing {name}"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, meta.json says {size}"
    return None


def read_meta(path: Path) -> dict:
    problem = check_complete(path)
    if problem:
        raise CheckpointError(f"{path}: not a complete training checkpoint: {problem}")
    return json.loads((path / META).read_text())


class CheckpointManager:
    def __init__(self, root: str | Path, keep_last: int, world: World):
        self.root = Path(root)
        self.keep_last = keep_last
        self.world = world

    def candidates(self) -> list[Path]:
        """`step_*` directories, newest first."""
        if not self.root.is_dir():
            return []
        dirs = [p for p in self.root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
        return sorted(dirs, key=lambda p: p.name, reverse=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint; incomplete newer ones are skipped with a warning."""
        for path in self.candidates():
            problem = check_complete(path)
            if problem is None:
                return path
            if self.world.is_main:
                log.warning("skipping incomplete checkpoint %s: %s", path, problem)
        return None

    def save(self, step: int, write: Callable[[Path], None], meta: dict) -> Path:
        """Collective: every rank calls it; `write(tmp_dir)` writes this rank's files."""
        final = step_dir(self.root, step)
        tmp = self.root / f".{final.name}.tmp"
        if self.world.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in [*self.root.glob(".step_*.tmp"), *self.root.glob(".step_*.removing")]:
                shutil.rmtree(stale, ignore_errors=True)
            try:
                tmp.mkdir()
            except WRITE_ERRORS as e:
                raise self._write_failed(final, tmp, e) from None
        barrier(self.world)
        try:
            write(tmp)
        except WRITE_ERRORS as e:
            raise self._write_failed(final, tmp, e) from None
        barrier(self.world)
        if self.world.is_main:
            try:
                self._finish(step, tmp, final, meta)
            except WRITE_ERRORS as e:
                raise self._write_failed(final, tmp, e) from None
        barrier(self.world)
        return final

    def _write_failed(self, final: Path, tmp: Path, err: Exception) -> WriteError:
        """A full disk or an I/O error mid-write: drop the partial write, name what is still intact."""
        shutil.rmtree(tmp, ignore_errors=True)
        reason = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) and err.strerror else str(err)
        return WriteError(
            f"{final}: cannot write the checkpoint ({reason}); the partial write was removed, the last complete "
            f"checkpoint is {self.latest() or 'none'}"
        )

    def _finish(self, step: int, tmp: Path, final: Path, meta: dict) -> None:
        """Rank 0, once every rank has written: sizes and meta.json last, then the rename."""
        files = {}
        for f in sorted(tmp.iterdir()):
            fsync_path(f)
            files[f.name] = f.stat().st_size
        record = {"format": FORMAT, "step": step, **meta, "files": files}
        meta_tmp = tmp / (META + ".tmp")
        meta_tmp.write_text(json.dumps(record, indent=1))
        fsync_path(meta_tmp)
        meta_tmp.rename(tmp / META)
        if final.exists():  # the same step saved again (a rerun after a crash right after saving)
            _remove(final)
        tmp.rename(final)
        fsync_path(self.root)
        self.prune()

    def prune(self) -> None:
        complete = [p for p in self.candidates() if check_complete(p) is None]
        for old in complete[self.keep_last :]:
            _remove(old)


def _remove(path: Path) -> None:
    """Delete a checkpoint directory without ever leaving a visible, half-deleted `step_*`.

    A kill in the middle of `rmtree` would leave `step_N` with some files gone; renaming it to a
    hidden name first makes the removal atomic as far as `latest()` can see. A leftover hidden
    directory is swept by the next save.
    """
    trash = path.with_name(f".{path.name}.removing")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
