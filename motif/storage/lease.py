"""One writer per directory: an exclusive lease file beside it, with a heartbeat.

`acquire(directory, what)` creates `.NAME.lease` next to `directory` (the directory itself may not
exist yet, and is replaced by a rename, so the lease cannot live inside it). A second writer of
the same directory, on any host, fails at once with one line naming the holder.

Why it is built this way:

* **O_EXCL create, nothing else.** It is the one atomic primitive that NFS (v3 and later),
  Lustre and CephFS all honour across clients. `flock`/`fcntl` locks are not reliable there (NFS
  emulates them through a lock daemon that many clusters do not run; some mounts make them
  local-only, so two hosts both "hold" the lock), and they vanish silently when a client loses
  its mount.
* **A heartbeat, because processes die without cleaning up.** A SIGKILL or a lost node leaves
  the file behind. The holder rewrites its heartbeat time every `heartbeat_s` from a daemon
  thread; a lease whose heartbeat is older than `stale_s` is taken over. On the holder's own host
  a dead holder is recognised at once (the pid is gone, or is a different process: the process
  start time and the boot id are recorded too, because containers reuse small pids), so a rerun
  after a kill does not wait. Across hosts the judgement uses wall clocks, which a cluster keeps
  within milliseconds of each other (NTP); `stale_s` (60 s) is far above any such skew.
* **Takeover without a race.** The lease path never goes missing while a stale lease is
  replaced, so no contender can slip a create into a gap. A contender that judged lease S stale
  claims it with `link(path, .NAME.lease.claim-<S's nonce>)`: `link` never overwrites, so only one
  contender gets that name, and reading through it shows what it linked. If that is still S, this
  contender alone writes its fresh lease under a unique name and renames it over the path (an
  atomic replace), then drops the claim. If the path already named another contender's fresh
  lease, the claim is only a second name for it: it is removed, and the path was never touched.
  A claim outlives its contender only if that contender dies within the few milliseconds of a
  takeover; such a claim is broken once it is `stale_s` old.
* **The holder writes only through its own file descriptor.** Heartbeats go to the inode it
  created, never by path, so a holder that was paused past `stale_s` and taken over can never
  overwrite its successor's lease; it sees the path now names another inode, marks itself lost,
  and `check()` (called before committing anything) raises.
* **Released on exit**: the context manager removes the file it created (and only that one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from motif.errors import MotifError

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
STALE_S = 60.0
# A heartbeat further ahead of this host's clock than this was written by a host whose clock is
# wrong: its age is then judged by the file's modification time (stamped by the volume, rewritten by
# every heartbeat), so a skewed holder is taken over after STALE_S like any other, not after the skew.
FUTURE_S = 5.0
FORMAT = "motif-lease/1"
_SETTLE_S = 1.0  # a lease just created may be read before its holder wrote it: read again for this long


class LeaseError(MotifError):
    """Another process holds the lease (the message names it), or this process lost its lease."""


@dataclass
class Holder:
    """What a lease file says about the process that holds it."""

    host: str
    pid: int
    start: int  # process start time, in clock ticks after boot (pids are reused)
    boot: str  # the kernel's boot id: on the same host name after a reboot, pids mean nothing
    nonce: str
    what: str
    acquired: float
    heartbeat: float
    stale_after: float
    format: str = FORMAT

    def describe(self, now: float | None = None, age: float | None = None, ahead: float = 0.0) -> str:
        age = max(0.0, (now or time.time()) - self.heartbeat) if age is None else age
        skew = f"; its heartbeat is {ahead:.0f}s ahead of this host's clock" if ahead > 0 else ""
        return f"{self.what} (host {self.host}, pid {self.pid}, last heartbeat {age:.0f}s ago{skew})"


INSIDE_NAME = ".motif.lease"


def lease_path(directory: str | Path, inside: bool = False) -> Path:
    """Beside the directory (it may be replaced by a rename), or `inside` it (a directory that is only
    ever written into, such as a stage's checkpoint directory mounted alone on a read-only volume)."""
    directory = Path(os.path.abspath(directory))
    return directory / INSIDE_NAME if inside else directory.parent / f".{directory.name}.lease"


class Lease:
    """A held lease. Use as a context manager; `check()` before committing a write."""

    def __init__(self, path: Path, directory: Path, holder: Holder, fd: int, heartbeat_s: float):
        self.path, self.directory, self.holder = path, directory, holder
        self._fd = fd
        self._heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.lost: str | None = None
        self._thread = threading.Thread(target=self._beat, name=f"lease {path.name}", daemon=True)
        self._thread.start()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def check(self) -> None:
        """Raise LeaseError if the lease is no longer ours (taken over while this process stalled)."""
        with self._lock:
            if self.lost is None and self._fd >= 0 and not self._still_ours():
                self.lost = f"{self.path} now belongs to another process"
        if self.lost:
            raise LeaseError(f"{self.directory}: lease lost ({self.lost}); nothing was committed")

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=self._heartbeat_s + 5)
        with self._lock:
            if self._fd < 0:
                return
            try:
                if self._still_ours():
                    os.unlink(self.path)
            except OSError as e:
                log.warning("%s: could not remove the lease file: %s", self.path, e.strerror or e)
            finally:
                os.close(self._fd)
                self._fd = -1
                _HELD.discard(str(self.path))

    def _still_ours(self) -> bool:
        try:
            st, mine = os.stat(self.path), os.fstat(self._fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            with self._lock:
                if self._fd < 0:
                    return
                if not self._still_ours():
                    self.lost = self.lost or f"{self.path} was taken over by another process"
                    log.error("%s: lease lost: %s", self.directory, self.lost)
                    return
                self.holder.heartbeat = time.time()
                try:
                    _write_holder(self._fd, self.holder)
                except OSError as e:  # a transient volume error: the next beat tries again
                    log.warning("%s: heartbeat not written: %s", self.path, e.strerror or e)


_HELD: set[str] = set()  # lease files held by this process (a second acquire here is a bug, not a peer)


def acquire(
    directory: str | Path,
    what: str,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    stale_s: float = STALE_S,
    wait_s: float = 0.0,
    wait_s_same_host: float = 0.0,
    inside: bool = False,
) -> Lease:
    """Take the exclusive lease of `directory` for `what` (e.g. "motif grow"), or raise LeaseError.

    `wait_s` > 0 waits that long for a live holder to finish or go stale before giving up; the
    default fails at once. `wait_s_same_host`: how long to wait for a holder with this host's name
    on another boot: a pod recreated on another node keeps its name, so such a holder is most
    likely this pod's own previous incarnation, whose heartbeat only stops when it goes stale.
    `inside`: keep the lease file in the directory (created if missing) instead of beside it.
    """
    directory = Path(os.path.abspath(directory))
    path = lease_path(directory, inside)
    if str(path) in _HELD:
        raise LeaseError(f"{directory}: this process already holds its lease (a second writer in one process)")
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + wait_s
    while True:
        holder = _new_holder(what, stale_s)
        fd = _create(path, holder)
        if fd is not None:
            _HELD.add(str(path))
            return Lease(path, directory, holder, fd, heartbeat_s)
        not_a_lease = _not_a_file(path)
        if not_a_lease:  # a link or a directory: never ours to take over, and retrying would spin
            raise LeaseError(
                f"{directory}: {path} is {not_a_lease}, not a lease file (remove it if no process writes {directory})"
            )
        current = _read_settled(path)
        if current is None:  # released between our create and our read: try again
            continue
        problem = _stale_reason(path, current, stale_s)
        if problem is not None:
            fd = _take_over(path, current, holder, stale_s)
            if fd is not None:
                log.warning("%s: took over a stale lease: %s", directory, problem)
                _HELD.add(str(path))
                return Lease(path, directory, holder, fd, heartbeat_s)
            continue
        until = deadline
        if isinstance(current, Holder) and current.host == socket.gethostname() and current.boot != _boot_id():
            until = max(deadline, started + wait_s_same_host)
        if time.monotonic() < until:
            time.sleep(min(heartbeat_s, max(0.1, until - time.monotonic())))
            continue
        raise LeaseError(_busy_message(directory, path, current, stale_s))


# ---- the lease file ---------------------------------------------------------------------------


def _new_holder(what: str, stale_s: float) -> Holder:
    now = time.time()
    return Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        start=_start_ticks(os.getpid()) or 0,
        boot=_boot_id(),
        nonce=uuid.uuid4().hex,
        what=what,
        acquired=now,
        heartbeat=now,
        stale_after=stale_s,
    )


def _not_a_file(path: Path) -> str | None:
    """What stands at `path` if it is not a regular file (a lease is only ever one), else None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        return f"a symbolic link to {target}" + ("" if os.path.exists(path) else " (which does not exist)")
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def _create(path: Path, holder: Holder) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    try:
        _write_holder(fd, holder)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def _write_holder(fd: int, holder: Holder) -> None:
    data = (json.dumps(asdict(holder), sort_keys=True) + "\n").encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)


def _read(path: Path) -> Holder | str | None:
    """The holder, None if there is no file, or the text of a file that does not parse."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        return f"unreadable: {e}"
    try:
        holder = Holder(**json.loads(text))
    except (json.JSONDecodeError, TypeError) as e:
        return f"not a lease ({' '.join(str(e).split())})"
    for name, kinds in _FIELD_TYPES.items():
        value = getattr(holder, name)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"not a lease ({name}: {value!r})"
    return holder


_FIELD_TYPES = {
    "host": str,
    "pid": int,
    "start": int,
    "boot": str,
    "nonce": str,
    "what": str,
    "acquired": int | float,
    "heartbeat": int | float,
    "stale_after": int | float,
}


def _read_settled(path: Path) -> Holder | str | None:
    """Read the lease, giving a holder that is writing it right now a moment to finish."""
    deadline = time.monotonic() + _SETTLE_S
    while True:
        current = _read(path)
        if not isinstance(current, str) or time.monotonic() > deadline:
            return current
        time.sleep(0.05)


def _stale_reason(path: Path, current: Holder | str, stale_s: float) -> str | None:
    """Why the lease may be taken over, or None while its holder looks alive."""
    now = time.time()
    if isinstance(current, str):  # garbage: stale only once nobody has touched it for a while
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            return "removed"
        return f"{path} is {current}, untouched for {age:.0f}s" if age > stale_s else None
    if current.host == socket.gethostname() and current.boot == _boot_id():
        start = _start_ticks(current.pid)
        if start is None:
            return f"{current.describe(now)} is no longer running"
        if current.start and start != current.start:
            return f"{current.describe(now)} is no longer running (its pid now names another process)"
    limit = max(stale_s, current.stale_after)
    age, ahead = _heartbeat_age(path, current, now)
    if age > limit:
        return f"{current.describe(now, age, ahead)}: no heartbeat for more than {limit:.0f}s"
    return None


def _heartbeat_age(path: Path, holder: Holder, now: float) -> tuple[float, float]:
    """Seconds since the holder's last heartbeat, and how far its clock is ahead of ours (0 if not)."""
    ahead = holder.heartbeat - now
    if ahead <= FUTURE_S:
        return max(0.0, now - holder.heartbeat), 0.0
    try:  # a clock ahead of ours: every heartbeat rewrites the file, so its mtime tells the age
        return max(0.0, now - os.stat(path).st_mtime), ahead
    except OSError:
        return 0.0, ahead


def _take_over(path: Path, judged: Holder | str, holder: Holder, stale_s: float) -> int | None:
    """Replace the stale lease `judged` at `path` by a fresh one for `holder`: its descriptor, or
    None (nothing changed) if another contender is taking it over or already has."""
    try:
        identity = judged.nonce if isinstance(judged, Holder) else f"ino{os.stat(path).st_ino}"
    except FileNotFoundError:
        return None  # released or replaced since it was read: just try again
    claim = path.with_name(f"{path.name}.claim-{identity}")
    try:
        os.link(path, claim)
    except FileNotFoundError:
        return None
    except FileExistsError:  # another contender is replacing it right now (or died doing so)
        _break_if_abandoned(claim, stale_s)
        time.sleep(0.02)
        return None
    found = _read(claim)
    same = (isinstance(found, Holder) and isinstance(judged, Holder) and found.nonce == judged.nonce) or (
        isinstance(found, str) and isinstance(judged, str)
    )
    if not same:  # the path already names a fresh lease: the claim is only a second name for it
        os.unlink(claim)
        return None
    fresh = path.with_name(f"{path.name}.new-{holder.nonce}")
    fd = _create(fresh, holder)
    if fd is None:  # the unique name exists: cannot happen unless nonces repeat
        os.unlink(claim)
        return None
    try:
        os.rename(fresh, path)  # the stale lease is replaced in one step: the path is never missing
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(fresh)
        os.unlink(claim)
        raise
    os.unlink(claim)  # only now: a later claim of the same nonce reads the fresh lease, not the stale one
    return fd


def _break_if_abandoned(claim: Path, stale_s: float) -> None:
    """Remove a claim whose contender died in the middle of a takeover. A claim is a hard link to the
    stale lease, which nobody writes any more: linking it stamped the inode's ctime, so that is when
    the claim was made."""
    try:
        made = os.stat(claim).st_ctime
    except FileNotFoundError:
        return
    if time.time() - made > stale_s:
        log.warning("%s: removing a takeover claim abandoned %.0fs ago", claim, time.time() - made)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim)


def _busy_message(directory: Path, path: Path, current: Holder | str, stale_s: float) -> str:
    if isinstance(current, str):
        return f"{directory}: in use: {path} is {current} (remove it if no process writes {directory})"
    now = time.time()
    age, ahead = _heartbeat_age(path, current, now)
    return (
        f"{directory}: in use by {current.describe(now, age, ahead)}; one writer per directory: wait for it to "
        f"finish (a dead holder's lease is taken over after {max(stale_s, current.stale_after):.0f}s without a "
        "heartbeat)"
    )


# ---- process identity ---------------------------------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """A process's start time (clock ticks after boot); None if no such process is running (a
    zombie, killed but not yet reaped by its parent, is not running); 0 if it cannot be told."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return 0
    try:
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        if fields[0] in ("Z", "X"):
            return None
        return int(fields[19])  # field 22 of proc(5)
    except (IndexError, ValueError):
        return 0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
