"""A lease path that is not a lease file, and a lease written by a host whose clock is ahead.

- A dangling symbolic link at the lease path made `motif grow` and `motif train` spin at full CPU
  forever (the exclusive create fails, the read finds nothing, retry); a directory there ended in a
  traceback once it was old. Both now fail at once: exit 2, one line naming the path.
- A heartbeat in the future blocked writers for as long as the skew while the message said "taken
  over after 60s": its age is now judged by the file's modification time, so a dead holder with a
  skewed clock is taken over after 60 s like any other, and the message says how far ahead it is.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from motif.storage import lease as leases

from ..train.conftest import stage_section, write_stage
from .test_bad_inputs import check_error
from .test_faults import GROW_TARGETS, source_checkpoint  # noqa: F401  (the 21 MB source fixture)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: a link's target, a file's bytes, a directory's presence."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = ("link", os.readlink(p))
        elif p.is_file():
            out[key] = ("file", p.stat().st_mtime_ns, p.read_bytes())
        else:
            out[key] = ("dir",)
    return out


def _argv(command: str, workdir: Path, source: Path) -> tuple[list[str], Path]:
    """The command, and its lease path."""
    if command == "train":
        stage = write_stage(workdir, stage_section("lease", train={"max_steps": 2}))
        (workdir / "ck/lease").mkdir(parents=True)
        return ["train", str(stage), "--metrics-port", "0"], workdir / "ck/lease" / leases.INSIDE_NAME
    return ["grow", str(source), str(workdir / "grown"), *GROW_TARGETS], workdir / ".grown.lease"


@pytest.mark.parametrize("kind", ["dangling-link", "directory"])
@pytest.mark.parametrize("command", ["train", "grow"])
def test_a_lease_path_that_is_not_a_file_fails_at_once_in_one_line(workdir, zygote, source_checkpoint, command, kind):  # noqa: F811
    argv, path = _argv(command, workdir, source_checkpoint)
    if kind == "dangling-link":
        path.symlink_to(workdir / "nowhere")
        want = "is a symbolic link to"
    else:
        path.mkdir()
        old = time.time() - 3600  # untouched for an hour: it used to be "taken over", and unlink() raised
        os.utime(path, (old, old))
        want = "is a directory"
    before = _snapshot(workdir)
    t0 = time.monotonic()
    child = zygote.spawn(argv, workdir, workdir.parent / f"{command}-{kind}.log")
    code = child.wait(timeout=60)
    line = check_error(code, child.text(), command, (str(path), want, "not a lease file"))
    print(line, f"({time.monotonic() - t0:.1f}s)")
    assert os.path.lexists(path) and _snapshot(workdir) == before
    assert not Path(f"/proc/{child.pid}").exists()
    assert not (workdir / "grown").exists() and not list(workdir.glob(".grown.partial-*"))


def _skewed_lease(directory: Path, mtime_age: float) -> leases.Holder:
    """The lease of a holder on another host whose clock is an hour ahead, last written `mtime_age` ago."""
    holder = leases._new_holder("motif grow", leases.STALE_S)
    holder.host, holder.boot, holder.pid = "node-7", "b", 4242
    holder.heartbeat = holder.acquired = time.time() + 3600
    path = leases.lease_path(directory)
    path.write_text(json.dumps(holder.__dict__))
    written = time.time() - mtime_age
    os.utime(path, (written, written))
    return holder


def test_a_heartbeat_from_a_clock_ahead_is_judged_by_the_files_age_and_said_truthfully(
    workdir,
    zygote,
    source_checkpoint,  # noqa: F811
):
    argv, path = _argv("grow", workdir, source_checkpoint)
    _skewed_lease(workdir / "grown", mtime_age=2)  # alive: it wrote its heartbeat 2 s ago
    before = _snapshot(workdir)
    child = zygote.spawn(argv, workdir, workdir.parent / "alive.log")
    line = check_error(child.wait(timeout=60), child.text(), "grow", ("in use by motif grow (host node-7",))
    assert "last heartbeat 2s ago; its heartbeat is 3600s ahead of this host's clock" in line, line
    assert "taken over after 60s without a heartbeat" in line
    assert _snapshot(workdir) == before

    _skewed_lease(workdir / "grown", mtime_age=120)  # dead: silent for two minutes, whatever its clock says
    child = zygote.spawn(argv, workdir, workdir.parent / "dead.log")
    assert child.wait(timeout=120) == 0, child.text()[-3000:]
    assert "took over a stale lease: motif grow (host node-7, pid 4242, last heartbeat 120s ago" in child.text()
    assert (workdir / "grown/config.json").is_file() and not path.exists()
