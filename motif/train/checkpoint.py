"""Training checkpoints: owned by one `CheckpointManager`, atomic, self-describing, pruned to the last K.

Why it is built this way:
- **The manager owns the state of the parts it saves** (torchtitan's `Stateful` pattern). The
  trainer hands it its parts once: global ones (the train state: step, tokens, counters) whose
  `state_dict()` goes into `meta.json`; per-rank ones (data position, RNG) written one JSON file
  per rank; and the engine, which writes and reads its own tensor files (each rank its shard).
  File names are declared here and in the engines, nowhere else; when to save is decided here
  (`due`); a resume is `find()` then `load()`.
- **Any world size reads a checkpoint.** Per-rank state is keyed by what it describes (a data
  shard, a rank of a world size), never by position, and a resume gives every part the union of
  all ranks' keys: each rank takes what it owns now. The engines reshard their tensors likewise.
- **A checkpoint appears only complete.** Every rank writes into `.step_NNNNNNNN.tmp`, then
  fsyncs its share of the files (those it wrote, and a slice of any others), all at once on threads
  (one fsync per file, at the end: the volume gets every file's writeback together); rank 0 waits
  for all, writes `meta.json` last (listing every file with its size) and renames the directory.
  A kill at any moment leaves the previous checkpoints untouched or a stale `.tmp` that the next
  save removes; `latest()` re-checks the sizes, so a directory damaged later (a copy cut short, a
  truncated file) is skipped with a warning instead of failing a resume.
- **Asynchronous, when asked** (`checkpoint.async_mode: async`, as torchtitan's): between two
  steps each rank copies its state to host memory (`TensorState.snapshot(copy=True)`), then a
  thread of the manager's writes, fsyncs and publishes it exactly as above while training goes on,
  its collectives on a process group of their own. One is in flight at a time; the next save, the
  stage's end and a preemption wait for it first, and its errors surface there. A kill during the
  write leaves the previous checkpoint the newest.
- **A checkpoint proves itself, in one pass.** `meta.json` records every file's size and checksum,
  each hashed as it is written (no read-back). A resume checks the sizes first (`find`: no byte
  read), then the checksums from the bytes the load reads anyway (`load`, `integrity.ReadVerifier`:
  each chunk hashed by the thread that read it, while it is in cache; a file no rank read is hashed
  by one rank after).
  A file that does not match is a `CorruptCheckpoint` on every rank once the load ends, and
  `--resume auto` rebuilds from the newest older checkpoint, naming the one it skipped. Checkpoints
  of which none verifies stop the run (only `--resume none` starts over): a silent restart from the
  stage's start would repeat weeks of work.
- **A rollback keeps the abandoned branch.** `--resume PATH` renames the checkpoints after PATH to
  `step_N.abandoned-<time>` (kept, never deleted), so a later `--resume auto` cannot jump back to them;
  so do a fallback past checkpoints that failed verification and `--resume none` (every checkpoint).
  Pruning thus only ever sees this run's branch: it never deletes a checkpoint that verifies while
  keeping one that does not.
- **Nothing is pickled**: tensors are safetensors, the rest JSON, so a checkpoint from shared
  storage cannot run code.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from safetensors import SafetensorError

from motif.errors import CheckpointError, WriteError
from motif.storage import integrity
from motif.storage.atomic import fsync_path
from motif.train.dist import World, barrier, first_problem, gather, gather_dicts

if TYPE_CHECKING:
    from motif.storage.lease import Lease

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d{8})$")
META = "meta.json"
RANK_STATE = "rank_{rank:05d}.json"
FORMAT = "motif-train-checkpoint/2"
# What a full disk or a failing volume raises while writing (safetensors wraps the OSError).
WRITE_ERRORS = (OSError, SafetensorError)


class CorruptCheckpoint(CheckpointError):
    """A checkpoint whose files do not match their checksums, found while loading it (on every rank)."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: not a usable training checkpoint: {problem}")
        self.path = path
        self.problem = problem


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorState(Protocol):
    """A part that writes its own (sharded) tensor files: the engine."""

    @property
    def name(self) -> str:
        """Recorded in meta.json: a checkpoint's tensor layout belongs to the engine that wrote it."""

    def snapshot(self, copy: bool) -> Callable[[Path], dict[str, str]]:
        """The writer of this rank's files as they are now (`copy`: of host copies, so that it may run
        while training goes on); it returns the checksums of the files it hashed while writing."""

    def load(self, directory: Path, verifier: integrity.ReadVerifier) -> None:
        """Read this rank's part, feeding `verifier` the bytes of the files it reads."""


def write_cause(err: BaseException) -> BaseException | None:
    """The write error behind `err`, or None for any other failure. torch.distributed.checkpoint
    (the fsdp engine's writer) wraps every rank's error in one CheckpointException, which is not
    even an Exception: it is unwrapped here so a full disk is one line on every engine."""
    if isinstance(err, WRITE_ERRORS):
        return err
    failures = getattr(err, "failures", None)
    if type(err).__name__ == "CheckpointException" and isinstance(failures, dict):
        for wrapped in failures.values():
            inner = wrapped[0] if isinstance(wrapped, tuple) else wrapped
            if isinstance(inner, WRITE_ERRORS):
                return inner
    return None


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def step_of(path: Path) -> int | None:
    """The step of a `step_NNNNNNNN` directory; None for any other name."""
    match = STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def _files(path: Path) -> list[Path]:
    return sorted(f for f in path.rglob("*") if f.is_file())


def check_complete(path: Path) -> str | None:
    """None if `path` is a complete checkpoint, else why not."""
    meta_file = path / META
    if not meta_file.is_file():
        return "no meta.json (the write did not finish)"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"unreadable meta.json: {e}"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return f"unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}"
    files = meta.get("files")
    if not isinstance(files, dict):
        return "meta.json has no file list"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"missing {name}"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, meta.json says {size}"
    return None


# Keys every meta.json has, and their types: a checkpoint missing one is refused in one line.
META_KEYS = {"step": int, "world_size": int, "stage": str, "parts": dict}


def read_meta(path: Path) -> dict[str, Any]:
    problem = check_complete(path)
    if problem:
        raise CheckpointError(f"{path}: not a complete training checkpoint: {problem}")
    meta: dict[str, Any] = json.loads((path / META).read_text())  # an object: `check_complete` read it
    for key, kind in META_KEYS.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CheckpointError(f"{path / META}: {key}: expected a {kind.__name__}, got {meta.get(key)!r}")
    return meta


def union(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Every rank's keys of a per-rank state, merged (nested dicts merged, the first value kept)."""
    out: dict[str, Any] = {}
    for state in states:
        for key, value in state.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = union([out[key], value])
            else:
                out.setdefault(key, value)
    return out


class CheckpointManager:
    def __init__(
        self,
        root: str | Path,
        keep_last: int,
        world: World,
        *,
        every_steps: int = 0,
        parts: dict[str, Stateful] | None = None,
        rank_parts: dict[str, Stateful] | None = None,
        tensors: TensorState | None = None,
        lease: Lease | None = None,
    ):
        self.root = Path(root)
        self.lease = lease  # the job's lease of `root` (rank 0): checked before a checkpoint appears
        self.keep_last = keep_last
        self.every_steps = every_steps
        self.world = world
        self.parts = parts or {}
        self.rank_parts = rank_parts or {}
        self.tensors = tensors
        self._writing: ThreadPoolExecutor | None = None  # the thread of an asynchronous checkpoint
        self._pending: Future[Path] | None = None

    def register(
        self,
        *,
        parts: dict[str, Stateful] | None = None,
        rank_parts: dict[str, Stateful] | None = None,
        tensors: TensorState | None = None,
    ) -> None:
        """Add the parts a checkpoint saves and restores, once they exist. A run finds the checkpoint
        it resumes from before it builds them (the data's shards come from it), with this same manager."""
        self.parts.update(parts or {})
        self.rank_parts.update(rank_parts or {})
        if tensors is not None:
            self.tensors = tensors

    # ---- when --------------------------------------------------------------------------------

    def due(self, step: int, last_step: int) -> bool:
        """A periodic checkpoint after `step`? (The stage's last step writes its output instead.)"""
        return self.every_steps > 0 and step % self.every_steps == 0 and step < last_step

    # ---- finding -----------------------------------------------------------------------------

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

    def find(self, how: str, failed: Sequence[tuple[Path, str]] = ()) -> Path | None:
        """Collective: the checkpoint `--resume` names: auto (the newest complete one whose files have
        their recorded sizes; newer ones that do not are skipped with a warning), none, or a directory.

        Contents are checked against their checksums by `load`, from the bytes it reads: a checkpoint
        that fails there is handed back in `failed` ((path, problem) pairs), and auto goes on to an
        older one."""
        if how == "none":
            return None
        if how != "auto":
            path = Path(how)
            problem = check_complete(path) or self._check_sizes(path)
            if problem:
                raise CheckpointError(f"{path}: not a usable training checkpoint: {problem}")
            return path
        refused = {p: problem for p, problem in failed}
        skipped = [f"{p.name}: {problem}" for p, problem in failed]
        for path in self.candidates():
            if path in refused:
                continue
            # Every rank asks the same question: a rank seeing another answer must not skip the collective check.
            problem = first_problem(self.world, check_complete(path)) or self._check_sizes(path)
            if problem is None:
                return path
            skipped.append(f"{path.name}: {problem}")
            if self.world.is_main:
                log.warning("skipping checkpoint %s: %s", path, problem)
        if skipped:
            # Restarting from the stage's start here would silently repeat all the work they hold.
            raise CheckpointError(
                f"motif.checkpoint.dir: {self.root} holds {len(skipped)} checkpoint(s) and none verifies "
                f"({'; '.join(skipped)}): restore one, or start over with --resume none (which keeps them aside)"
            )
        return None

    def _check_sizes(self, path: Path) -> str | None:
        """Collective: every recorded file present with its recorded size (no byte read)."""
        recorded = read_meta(path).get("checksums", {})
        return first_problem(self.world, integrity.verify(path, recorded, content=False))

    def rollback(self, path: Path | None) -> list[Path]:
        """Rank 0: rename the checkpoints after `path` (every one for None: a start over) aside (kept),
        so that `--resume auto` never returns to the abandoned branch, and pruning never counts a
        checkpoint of that branch (one that failed verification, say) against this run's. Returns
        their new names."""
        if not self.world.is_main:
            return []
        step = 0 if path is None else step_of(path)
        if step is None or (path is not None and path.parent.resolve() != self.root.resolve()):
            return []
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        moved = []
        for later in self.candidates():
            if (step_of(later) or 0) > step:  # every candidate has a step: it matched STEP_DIR
                aside = later.with_name(f"{later.name}.abandoned-{stamp}")
                later.rename(aside)
                moved.append(aside)
        if moved:
            fsync_path(self.root)
            log.warning(
                "rolled back to %s: later checkpoints kept aside as %s",
                path or "the stage's start",
                ", ".join(p.name for p in moved),
            )
        return moved

    # ---- saving ------------------------------------------------------------------------------

    def save(self, step: int, extra: dict[str, Any] | None = None) -> Path:
        """Collective: write every part's state as the checkpoint of `step` (an asynchronous one still
        being written is finished first)."""
        self.wait()
        write, meta = self._snapshot(False, extra)
        return self.publish(step, write, meta)

    def save_async(self, step: int, extra: dict[str, Any] | None, side: World) -> None:
        """Collective: take the state of `step` (host copies of this rank's tensors, the parts' state
        as JSON) and write it on a thread of its own while training goes on, as torchtitan's
        `async_mode`. The checkpoint appears, renamed into place by rank 0, only once every rank's
        files are durable; a process killed before that leaves the previous checkpoint the newest.
        The thread's collectives run on `side`, a process group of their own (`dist.side_world`).
        The previous asynchronous checkpoint is finished first; errors are raised by `wait()`."""
        self.wait()
        write, meta = self._snapshot(True, extra)
        self._writing = ThreadPoolExecutor(1, thread_name_prefix="motif-checkpoint")
        self._pending = self._writing.submit(self.publish, step, write, meta, side)

    def wait(self) -> Path | None:
        """Collective once a checkpoint is being written asynchronously: wait for it; its path, or
        None if none was in flight. A failed write raises here, as `save` would have."""
        pending, pool = self._pending, self._writing
        if pending is None or pool is None:
            return None
        self._pending = self._writing = None
        try:
            return pending.result()
        finally:
            pool.shutdown(wait=False)

    def _snapshot(
        self, copy: bool, extra: dict[str, Any] | None
    ) -> tuple[Callable[[Path], dict[str, str]], dict[str, Any]]:
        """The writer of this rank's files and the checkpoint's meta, both as of now."""
        rank_state = json.dumps({name: part.state_dict() for name, part in self.rank_parts.items()}).encode()
        tensors = self.tensors.snapshot(copy) if self.tensors is not None else None

        def write(directory: Path) -> dict[str, str]:
            sums = self._write_rank_state(directory, rank_state)
            if tensors is not None:
                sums.update(tensors(directory))
            return sums

        meta = {
            "world_size": self.world.world_size,
            "engine": self.tensors.name if self.tensors is not None else None,
            "parts": json.loads(json.dumps({name: part.state_dict() for name, part in self.parts.items()})),
            **(extra or {}),
        }
        return write, meta

    def _write_rank_state(self, directory: Path, data: bytes) -> dict[str, str]:
        """This rank's per-rank state (JSON); returns {file name: checksum of the bytes written}."""
        name = RANK_STATE.format(rank=self.world.rank)
        (directory / name).write_bytes(data)
        hasher = integrity.Hasher()
        hasher.update(data)
        return {name: hasher.text()}

    def publish(
        self,
        step: int,
        write: Callable[[Path], dict[str, str] | None],
        meta: dict[str, Any],
        world: World | None = None,
    ) -> Path:
        """Collective: every rank calls it; `write(tmp_dir)` writes this rank's files and may return
        the checksums it computed while writing them ({relative name: checksum}: not read again).
        `world`: the ranks on the group the collectives use (default: the manager's)."""
        world = world or self.world
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
        barrier(world)
        written, failed = None, None
        try:
            written = write(tmp)
        except BaseException as e:
            cause = write_cause(e)
            if cause is None:
                raise
            failed = _reason(cause)
        # Collective: a rank whose write failed (its disk full) stops every rank, with its reason;
        # none is left waiting for it in the next collective.
        failed = first_problem(world, failed)
        if failed is not None:
            raise self._write_failed(final, tmp, failed) from None
        # Collective: every rank has written. Anything but a mapping means no checksum was taken.
        mine = written if isinstance(written, dict) else {}
        known = gather_dicts(world, {name: (self.world.rank, checksum) for name, checksum in mine.items()})
        share: dict[str, dict[str, Any]] = {}
        try:
            share = self._seal_share(tmp, known)
        except WRITE_ERRORS as e:  # an fsync is where a full or failing volume often shows first
            failed = _reason(e)
        sums = gather_dicts(world, share)
        failed = first_problem(world, failed)  # every rank stops together, none waits alone
        if failed is not None:
            raise self._write_failed(final, tmp, failed) from None
        if self.world.is_main:
            try:
                self._finish(step, tmp, final, {**meta, "checksums": sums})
            except WRITE_ERRORS as e:
                raise self._write_failed(final, tmp, e) from None
        barrier(world)
        return final

    def _seal_share(self, tmp: Path, known: dict[str, tuple[int, str]]) -> dict[str, dict[str, Any]]:
        """Make this rank's share of the checkpoint's files durable, all at once (one fsync per file,
        on threads: the disk sees every file's writeback together, not one after the other), and
        return their sizes and checksums. The share is the files this rank wrote and hashed while
        writing (`known`: {name: (rank, checksum)}, not read again), and a slice of the others."""
        others = [str(f.relative_to(tmp)) for f in _files(tmp) if str(f.relative_to(tmp)) not in known]
        names = [n for n, (rank, _) in sorted(known.items()) if rank == self.world.rank]
        names += others[self.world.rank :: self.world.world_size]

        def seal(name: str) -> dict[str, Any]:
            fsync_path(tmp / name)
            checksum = known[name][1] if name in known else integrity.checksum_file(tmp / name)
            return integrity.entry(tmp / name, checksum)

        if not names:
            return {}
        with ThreadPoolExecutor(min(integrity.THREADS, len(names))) as pool:
            return dict(zip(names, pool.map(seal, names), strict=True))

    def _write_failed(self, final: Path, tmp: Path, err: BaseException | str) -> WriteError:
        """A full disk or an I/O error mid-write: drop the partial write, name what is still intact."""
        shutil.rmtree(tmp, ignore_errors=True)
        reason = err if isinstance(err, str) else _reason(err)
        return WriteError(
            f"{final}: cannot write the checkpoint ({reason}); the partial write was removed, the last complete "
            f"checkpoint is {self.latest() or 'none'}"
        )

    def _finish(self, step: int, tmp: Path, final: Path, meta: dict[str, Any]) -> None:
        """Rank 0, once every rank has sealed its share (`_seal_share`): sizes and meta.json last, then
        the rename."""
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in _files(tmp)}
        for d in sorted({f.parent for f in _files(tmp)}, reverse=True):
            fsync_path(d)
        record = {"format": FORMAT, "step": step, "world_size": self.world.world_size, **meta, "files": files}
        meta_tmp = tmp / (META + ".tmp")
        meta_tmp.write_text(json.dumps(record, indent=1))
        fsync_path(meta_tmp)
        meta_tmp.rename(tmp / META)
        if self.lease is not None:
            self.lease.check()  # taken over while this job stalled: publish nothing
        if final.exists():  # the same step saved again (a rerun after a crash right after saving)
            _remove(final)
        tmp.rename(final)
        fsync_path(self.root)
        self.prune()

    def prune(self) -> None:
        complete = [p for p in self.candidates() if check_complete(p) is None]
        for old in complete[self.keep_last :]:
            _remove(old)

    # ---- resuming ----------------------------------------------------------------------------

    def load(self, path: Path) -> dict[str, Any]:
        """Collective: load every part from the checkpoint `path` (written by any world size), checking
        every file against its checksum on the way; returns its meta. A file that does not match is a
        `CorruptCheckpoint` on every rank, raised once everything is read (the parts then hold a mix:
        load another checkpoint, or stop)."""
        meta = read_meta(path)
        engine = self.tensors.name if self.tensors is not None else None
        if meta.get("engine") != engine:
            raise CheckpointError(
                f"{path}: written by engine {meta.get('engine')}, this run uses {engine} (motif.parallel.engine): "
                "a checkpoint's tensor layout belongs to its engine"
            )
        verifier = integrity.ReadVerifier(path, meta.get("checksums", {}))
        failed = None
        try:
            self._load_parts(path, meta, verifier)
        except CheckpointError as e:
            failed = str(e)
        self._check_contents(path, verifier, failed)
        return meta

    def _load_parts(self, path: Path, meta: dict[str, Any], verifier: integrity.ReadVerifier) -> None:
        for name, part in self.parts.items():
            if name not in meta["parts"]:
                raise CheckpointError(f"{path}: meta.json: parts.{name}: missing")
            part.load_state_dict(meta["parts"][name])
        states = []
        for f in (path / RANK_STATE.format(rank=r) for r in range(meta["world_size"])):
            try:
                data = f.read_bytes()
                verifier.whole(f, data)
                states.append(json.loads(data))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{path}: unreadable per-rank state: {e}") from None
        for name, part in self.rank_parts.items():
            part.load_state_dict(union([s.get(name, {}) for s in states]))
        if self.tensors is not None:
            self.tensors.load(path, verifier)

    def _check_contents(self, path: Path, verifier: integrity.ReadVerifier, failed: str | None) -> None:
        """Collective: every recorded file checked once by some rank, then one verdict on every rank:
        a file that changed first (it explains a load that failed), then this rank's or another's
        load failure (`failed`: a checkpoint that verifies but does not fit this run). Files a rank
        read while loading were hashed then, and one collective tells every rank what all of them
        found; the rest (a file its hashing rank did not read from) are shared out and read now."""
        recorded = verifier.recorded
        problem, checked = verifier.finish()
        reports = gather(self.world, (problem, checked, failed))
        checked_anywhere = {name for _, names, _ in reports for name in names}
        problem = next((p for p, _, _ in reports if p is not None), None)
        rest = sorted(set(recorded) - checked_anywhere)  # the same on every rank: all ranks go on alike
        if rest and problem is None:
            mine = rest[self.world.rank :: self.world.world_size]
            problem = first_problem(self.world, integrity.verify(path, {n: recorded[n] for n in mine}))
        if problem is not None:
            raise CorruptCheckpoint(path, problem)
        failed = next((f for _, _, f in reports if f is not None), None)
        if failed is not None:
            raise CheckpointError(failed)


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return str(err)


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
