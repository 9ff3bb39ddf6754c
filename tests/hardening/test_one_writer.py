"""One writer per destination: the lease of `motif.storage.lease`, with real processes.

Two `motif grow` into one new destination at once: one grows it, the other fails at once with one
line naming the first (host and pid), and the output is the one a lone grow writes. Contenders
racing for a lease, fresh or stale, never both win. A killed holder's lease is taken over at once
on its own host, and after `stale_s` from another host; the holder that lost its lease knows it
and commits nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from motif.storage import lease as leases
from motif.storage.atomic import atomic_dir

from .test_faults import GROW_TARGETS, source_checkpoint  # noqa: F401  (the 21 MB source fixture)

ROOT = Path(__file__).resolve().parents[2]


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _error_lines(text: str, command: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"motif {command}: error: ")]


# ---- two grows into one destination -------------------------------------------------------------


@pytest.mark.slow
def test_two_grows_into_one_destination_one_wins_the_other_names_it(zygote, source_checkpoint, tmp_path):  # noqa: F811
    ref = zygote.spawn(["grow", str(source_checkpoint), str(tmp_path / "ref"), *GROW_TARGETS], tmp_path, tmp_path / "r")
    assert ref.wait() == 0, ref.text()
    reference = _digest(tmp_path / "ref")
    for attempt in range(3):
        dst = tmp_path / f"grown{attempt}"
        argv = ["grow", str(source_checkpoint), str(dst), *GROW_TARGETS]
        first = zygote.spawn(argv, tmp_path, tmp_path / f"a{attempt}.log")
        second = zygote.spawn(argv, tmp_path, tmp_path / f"b{attempt}.log")
        codes = {first.pid: first.wait(), second.pid: second.wait()}
        assert sorted(codes.values()) == [0, 2], (first.text(), second.text())
        winner, loser = (first, second) if codes[first.pid] == 0 else (second, first)
        lines = _error_lines(loser.text(), "grow")
        assert len(lines) == 1 and "Traceback" not in loser.text(), loser.text()
        assert f"{dst}: in use by motif grow (host " in lines[0], lines[0]
        assert f"pid {winner.pid}," in lines[0], lines[0]
        assert _digest(dst) == reference
        assert not (dst.parent / f".{dst.name}.lease").exists(), "the lease outlived its holder"
        assert not list(tmp_path.glob(f".{dst.name}.partial-*"))


@pytest.mark.slow
def test_a_killed_grow_is_taken_over_at_once_and_its_leftovers_removed(zygote, source_checkpoint, tmp_path):  # noqa: F811
    dst = tmp_path / "grown"
    argv = ["grow", str(source_checkpoint), str(dst), *GROW_TARGETS]
    child = zygote.spawn(argv, tmp_path, tmp_path / "killed.log")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".grown.partial-*")):
        assert child.poll() is None, child.text()
        assert time.monotonic() < deadline
        time.sleep(0.001)
    child.kill()
    assert child.wait() == -signal.SIGKILL
    assert (tmp_path / ".grown.lease").exists() and list(tmp_path.glob(".grown.partial-*"))
    t0 = time.monotonic()
    again = zygote.spawn(argv, tmp_path, tmp_path / "again.log")
    assert again.wait() == 0, again.text()
    assert time.monotonic() - t0 < leases.STALE_S, "waited for a heartbeat timeout on the holder's own host"
    assert "took over a stale lease" in again.text() and "is no longer running" in again.text()
    assert not list(tmp_path.glob(".grown.partial-*")), "the killed grow's partial output is still there"
    assert not (tmp_path / ".grown.lease").exists()


@pytest.mark.slow
def test_a_terminated_grow_removes_its_partial_output_and_its_lease(zygote, source_checkpoint, tmp_path):  # noqa: F811
    dst = tmp_path / "grown"
    child = zygote.spawn(["grow", str(source_checkpoint), str(dst), *GROW_TARGETS], tmp_path, tmp_path / "term.log")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".grown.partial-*")):
        assert child.poll() is None, child.text()
        assert time.monotonic() < deadline
        time.sleep(0.001)
    child.kill(signal.SIGTERM)
    assert child.wait() == 143, child.text()
    assert "stopped by SIGTERM" in child.text() and "Traceback" not in child.text()
    assert not dst.exists() and not list(tmp_path.glob(".grown.*")), sorted(p.name for p in tmp_path.iterdir())


# ---- the lease itself, across processes ----------------------------------------------------------

CONTENDER = textwrap.dedent(
    """
    import sys, time
    from motif.storage.lease import LeaseError, acquire
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    try:
        with acquire(sys.argv[1], "contender", heartbeat_s=0.2):
            print("won", flush=True)
            time.sleep(1.5)
    except LeaseError as e:
        print("lost", e, flush=True)
    """
)


def _race(directory: Path, n: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.time() + 2.0  # every contender is past its imports by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(directory), str(start)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(n)
    ]
    return [p.communicate(timeout=60)[0].strip() for p in procs]


def _dead_holder_lease(directory: Path, host: str | None = None, age: float = 0.0) -> None:
    """The lease of a process that is gone: a pid that exited, on this host or (host given) another."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = leases._new_holder("killed writer", leases.STALE_S)
    holder.pid, holder.start = dead.pid, 1
    if host is not None:
        holder.host, holder.boot = host, "another-boot"
    holder.heartbeat -= age
    leases.lease_path(directory).write_text(json.dumps(holder.__dict__))


@pytest.mark.slow
@pytest.mark.parametrize("stale", ["none", "dead-here", "silent-elsewhere"])
def test_racing_contenders_never_both_win(tmp_path, stale):
    for round_ in range(3):
        directory = tmp_path / f"d{round_}"
        if stale == "dead-here":
            _dead_holder_lease(directory)
        elif stale == "silent-elsewhere":
            _dead_holder_lease(directory, host="another-node", age=leases.STALE_S + 30)
        results = _race(directory, 4)
        winners = [r for r in results if r.startswith("won")]
        assert len(winners) == 1, results
        for r in results:
            if r.startswith("lost"):
                assert "in use by contender (host " in r, r
        assert not leases.lease_path(directory).exists()
        assert not list(tmp_path.glob("*.lease.*")), "a takeover left a claim or a fresh lease's temp name behind"


def test_a_live_holder_on_another_host_is_not_taken_over(tmp_path):
    holder = leases._new_holder("motif train", leases.STALE_S)
    holder.host, holder.boot, holder.pid = "node-7", "b", 4242
    leases.lease_path(tmp_path / "ck").write_text(json.dumps(holder.__dict__))
    with pytest.raises(leases.LeaseError, match=r"in use by motif train \(host node-7, pid 4242, last heartbeat"):
        leases.acquire(tmp_path / "ck", "motif grow")
    t0 = time.monotonic()
    with pytest.raises(leases.LeaseError):
        leases.acquire(tmp_path / "ck", "motif grow", wait_s=1.0, heartbeat_s=0.2)
    assert time.monotonic() - t0 >= 1.0
    assert json.loads(leases.lease_path(tmp_path / "ck").read_text())["nonce"] == holder.nonce


def test_the_heartbeat_refreshes_and_a_lost_lease_commits_nothing(tmp_path):
    dst = tmp_path / "out"
    held = leases.acquire(dst, "motif grow", heartbeat_s=0.1)
    try:
        first = json.loads(held.path.read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads(held.path.read_text())["heartbeat"] > first
        # Another process takes the lease over (as if this one had stalled past stale_s).
        os.rename(held.path, tmp_path / "moved")
        other = leases._new_holder("motif grow", leases.STALE_S)
        held.path.write_text(json.dumps(other.__dict__))
        with pytest.raises(leases.LeaseError, match="lease lost"), atomic_dir(dst, False, lease=held) as tmp:
            (tmp / "config.json").write_text("{}")
        assert not dst.exists() and not list(tmp_path.glob(".out.partial-*"))
        time.sleep(0.3)
        assert json.loads(held.path.read_text())["nonce"] == other.nonce, "the old holder overwrote its successor"
    finally:
        held.release()
    assert json.loads(held.path.read_text())["nonce"] == other.nonce, "release removed a lease that was not ours"


def test_one_process_cannot_take_its_own_lease_twice(tmp_path):
    with leases.acquire(tmp_path / "x", "first"), pytest.raises(leases.LeaseError, match="already holds its lease"):
        leases.acquire(tmp_path / "x", "second")
    with leases.acquire(tmp_path / "x", "again"):
        pass


def test_a_claim_left_by_a_contender_that_died_mid_takeover_is_broken_after_stale_s(tmp_path, caplog):
    directory = tmp_path / "ck"
    _dead_holder_lease(directory)
    path = leases.lease_path(directory)
    dead = json.loads(path.read_text())
    claim = path.with_name(f"{path.name}.claim-{dead['nonce']}")
    os.link(path, claim)  # what a contender killed between claiming and replacing the lease leaves
    t0 = time.monotonic()
    with leases.acquire(directory, "motif grow", stale_s=1.0) as held:
        assert time.monotonic() - t0 >= 1.0, "a fresh claim was broken: two contenders could both replace the lease"
        assert json.loads(path.read_text())["nonce"] == held.holder.nonce
    assert "removing a takeover claim abandoned" in caplog.text
    assert not path.exists() and not list(tmp_path.glob("*.lease.*"))
