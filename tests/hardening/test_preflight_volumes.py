"""Preflight on real volumes: a destination on a read-only mount, and a growth larger than the free
space of a small one, are refused before anything is read or written, in one line, files unchanged.

The volumes are tmpfs mounts (the tests run as root). Where mounting is refused, a chmod-ed
directory (not root) or sysfs (root) stands in for the read-only volume, and an FFN size chosen
from this machine's free disk and memory for the small one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from . import test_bad_inputs as catalogue
from .test_bad_inputs import _snapshot, check_error, run_cli

checkpoints, case_dir = catalogue.checkpoints, catalogue.case_dir  # the same fixtures


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str) -> Iterator[bool]:
    """A tmpfs at `path` with `options` (we run as root); yields False where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def test_an_unwritable_destination_is_refused_before_anything_is_read(case_dir):
    with mounted_tmpfs(case_dir / "ro", "ro,size=1m") as mounted:
        if mounted:
            dst, reasons = "ro/grown", ("Read-only file system",)
        elif os.geteuid() != 0:
            (case_dir / "ro").chmod(0o555)
            dst, reasons = "ro/grown", ("Permission denied",)
        else:  # root without the right to mount: sysfs refuses new files even to root
            dst, reasons = "/sys/motif-grown", ("Permission denied", "Operation not permitted")
        before = _snapshot(case_dir)
        code, stderr = run_cli(["grow", "single", dst, "--layers", "4"], case_dir)
        line = check_error(code, stderr, "grow", ("DST:", dst, "cannot write in"))
        assert any(r in line for r in reasons), line
        assert _snapshot(case_dir) == before


def test_a_growth_larger_than_the_free_space_is_refused_before_writing(case_dir):
    from motif.storage.space import available_memory, free_bytes

    with mounted_tmpfs(case_dir / "small", "size=1m") as mounted:
        if mounted:
            argv = ["grow", "single", "small/grown", "--layers", "4"]
        else:  # pick an FFN size whose output exceeds the free disk but whose largest tensor fits in memory
            free, memory = free_bytes(case_dir), available_memory()
            size = free // (2 * 3 * 64 * 4) + 1  # 2 layers x 3 FFN matrices x hidden 64 x fp32
            assert 3 * 64 * 4 * size < memory, "this machine can neither mount a small volume nor hold the test"
            argv = ["grow", "single", "small/grown", "--intermediate", str(size)]
        before = _snapshot(case_dir)
        code, stderr = run_cli(argv, case_dir)
        check_error(code, stderr, "grow", ("small", "not enough free space for the grown checkpoint", "free on"))
        assert _snapshot(case_dir) == before
        assert not list((case_dir / "small").iterdir())


def test_a_write_that_fails_midway_is_removed_and_the_old_output_kept(case_dir, zygote):
    """What no preflight sees (a per-file size limit, another writer filling the volume): the write
    fails, its partial directory is removed, the previous output stays as it was."""
    assert run_cli(["grow", "single", "grown", "--layers", "4"], case_dir)[0] == 0
    before = _snapshot(case_dir)
    child = zygote.spawn(
        ["grow", "single", "grown", "--layers", "4", "--overwrite"],
        case_dir,
        case_dir.parent / "mid.log",
        fsize=200_000,
    )
    assert child.wait() == 2, child.text()
    lines = [line for line in child.text().splitlines() if line.startswith("motif grow: error: ")]
    assert len(lines) == 1 and "Traceback" not in child.text(), child.text()
    assert "grown: cannot write" in lines[0] and "File too large" in lines[0], lines[0]
    assert "the partial write was removed, its previous contents are untouched" in lines[0]
    assert _snapshot(case_dir) == before
    assert not list(case_dir.glob(".grown.*"))
