"""Process group set-up from the environment torchrun and the PyTorchJob operator provide.

`RANK`/`WORLD_SIZE`/`LOCAL_RANK` are per process under torchrun (the PyTorchJob's own per-pod
values are consumed by torchrun as PET_* defaults). A bare process with none of them set is a
world of one and needs no rendezvous. NCCL on GPU, gloo on CPU; the collective timeout is the
stage's `parallel.collective_timeout_s`, so when a rank dies the survivors get an error from their
next collective instead of blocking forever, and exit non-zero (`fail_fast`) for the job's restart
policy to restart the gang from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Exit status of a rank that lost a peer: 1-127 so a PyTorchJob with restartPolicy ExitCode fails
# rather than recreating the pod in a loop; OnFailure restarts it in place.
EXIT_LOST_RANK = 3


@dataclass
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process without a process group
    group: Any = None  # the process group its collectives use (None: the default one)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init(device_kind: str, timeout_s: int, *, force_group: bool = False) -> World:
    """Join the process group described by the environment.

    `force_group`: create a group even for a world of one (DeepSpeed needs one).
    """
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device_kind == "cuda":
        if not torch.cuda.is_available():
            from motif.errors import MotifError

            raise MotifError(
                "motif.parallel.device: cuda, but no GPU is visible here (set device: cpu to train on CPU)"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if world_size == 1 and not force_group:
        return World(0, 1, 0, device, None)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if world_size == 1 and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())  # a lone process: no launcher chose one
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world_size))
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    if backend == "nccl":
        # Turn a stuck NCCL collective into an error (and a non-zero exit) at the timeout.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    from motif.teardown import joined_process_group

    joined_process_group()  # first: a failed rendezvous may leave the store's threads running too
    dist.init_process_group(
        backend=backend,
        timeout=datetime.timedelta(seconds=timeout_s),
        rank=rank,
        world_size=world_size,
        device_id=device if backend == "nccl" else None,
    )
    log.info(
        "rank %d/%d (local %d) joined the %s group at %s:%s",
        rank,
        world_size,
        local_rank,
        backend,
        os.environ["MASTER_ADDR"],
        os.environ["MASTER_PORT"],
    )
    world = World(rank, world_size, local_rank, device, backend)
    if world_size > 2:
        global _heartbeat
        _heartbeat = Heartbeat(world)
    return world


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def store() -> dist.distributed_c10d.Store:
    """The process group's key-value store (the rendezvous store), for small control messages."""
    return dist.distributed_c10d._get_default_store()


def describe_failure(err: BaseException) -> str:
    """A one-line account of a failed collective, naming the lost peer when the error does."""
    text = " ".join(str(err).split())
    if len(text) > 400:
        text = text[:400] + "..."
    return text


class Heartbeat:
    """Who is alive, known even after the rendezvous store is gone.

    A daemon thread bumps this rank's counter in the store every `interval_s` (it keeps beating
    while the main thread is blocked in a collective) and caches the job's verdict key. The first
    survivor of a failed collective compares the counters `stale_s` apart: the ranks whose counter
    stood still are the lost ones; it publishes them as the verdict, so survivors unblocked later
    (even once the store's host is gone) name the same ranks. Two store calls per rank per second.
    """

    def __init__(self, world: World, interval_s: float = 1.0, stale_s: float = 3.0):
        self.world, self.interval_s, self.stale_s = world, interval_s, stale_s
        self.verdict: str | None = None
        self.store_lost = False
        self._store = store()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="motif-heartbeat")
        self._thread.start()

    def _run(self) -> None:
        beat = 0
        while not self._stop.is_set():
            beat += 1
            try:
                self._store.set(f"motif/heartbeat/{self.world.rank}", str(beat))
                if self._store.check(["motif/lost"]):
                    self.verdict = self._store.get("motif/lost").decode()
            except Exception:  # the store's host is gone
                self.store_lost = True
                return
            self._stop.wait(self.interval_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the thread before the process group and the interpreter go. A daemon thread still
        inside a store call when the interpreter finalizes is ended by a forced unwind through C++
        frames that cannot unwind: std::terminate ("terminate called without an active exception",
        SIGABRT), and torchrun reports a finished run as failed."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _counters(self) -> dict[int, bytes]:
        keys = [f"motif/heartbeat/{r}" for r in range(self.world.world_size)]
        return dict(zip(range(self.world.world_size), self._store.multi_get(keys), strict=True))

    def lost_ranks(self) -> list[int] | None:
        """The lost ranks; None if they cannot be told (the store is gone and no verdict was cached)."""
        others = [r for r in range(self.world.world_size) if r != self.world.rank]
        if len(others) == 1:
            return others
        if self.verdict is None and not self.store_lost:
            result: list[int] | None = None

            def decide() -> None:
                nonlocal result
                try:
                    before = self._counters()
                    time.sleep(self.stale_s)
                    after = self._counters()
                    if self.verdict is None:
                        result = [r for r in others if before[r] == after[r]]
                        self._store.set("motif/lost", ",".join(map(str, result)))
                        time.sleep(2 * self.interval_s)  # the others' heartbeats cache it before this rank exits
                except Exception:
                    return

            thread = threading.Thread(target=decide, daemon=True)  # a dead store must not hold this rank
            thread.start()
            thread.join(self.stale_s + 3 * self.interval_s + 5.0)
            if result is not None:
                return result
        if self.verdict is not None:
            return [int(r) for r in self.verdict.split(",") if r]
        return None


_heartbeat: Heartbeat | None = None


def _describe_lost(world: World) -> str:
    if world.world_size == 2:
        return f"lost rank {1 - world.rank}"
    lost = _heartbeat.lost_ranks() if _heartbeat is not None else None
    if lost:
        return f"lost rank {', '.join(map(str, lost))}"
    if lost is None and "TORCHELASTIC_RUN_ID" not in os.environ and world.rank != 0:
        return "lost rank 0 (it hosts the rendezvous store, which no longer answers)"
    return "lost rank unknown (every rank's heartbeat is alive: a network fault or a stuck rank)"


def fail_fast(world: World, step: int, err: BaseException) -> None:
    """Exit this rank at once: a peer is gone, and a clean shutdown would block on it."""
    print(
        f"motif train: rank {world.rank}/{world.world_size}: lost contact with a peer rank at step {step} "
        f"({_describe_lost(world)}; collective failed or timed out): {describe_failure(err)}; "
        f"exiting with status {EXIT_LOST_RANK} "
        "so the job restarts from the last checkpoint",
        file=sys.stderr,
        flush=True,
    )
    logging.shutdown()
    os._exit(EXIT_LOST_RANK)


def is_collective_failure(err: BaseException) -> bool:
    """Whether `err`, raised in a collective, means a peer rank is gone (or unreachable)."""
    text = str(err).lower()
    markers = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "broken pipe")
    return isinstance(err, dist.DistBackendError) or any(m in text for m in markers)


def first_problem(world: World, problem: str | None) -> str | None:
    """The lowest rank's problem, known to every rank (None if no rank has one): a check made on
    each rank's own share ends with the same verdict everywhere, and no rank waits alone."""
    if not world.distributed:
        return problem
    problems: list[str | None] = [None] * world.world_size
    dist.all_gather_object(problems, problem, group=world.group)
    return next((p for p in problems if p is not None), None)


T = TypeVar("T")


def gather(world: World, mine: T) -> list[T]:
    """Every rank's `mine`, in rank order (one collective)."""
    if not world.distributed:
        return [mine]
    parts: list[T] = [mine] * world.world_size
    dist.all_gather_object(parts, mine, group=world.group)
    return parts


V = TypeVar("V")


def gather_dicts(world: World, mine: dict[str, V]) -> dict[str, V]:
    """Every rank's dict, merged (their keys are disjoint)."""
    return {k: v for part in gather(world, mine) for k, v in part.items()}


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier(group=world.group)


def side_world(world: World, timeout_s: int) -> World:
    """Collective (every rank, at the same point): the same ranks on a gloo group of their own, for
    a thread whose collectives run beside the training loop's (an asynchronous checkpoint's): two
    threads must never share one group, whose collectives are matched by order."""
    if not world.distributed:
        return world
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return dataclasses.replace(world, group=group)


def all_reduce_sum(world: World, t: torch.Tensor) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=world.group)
    return t


def close(world: World) -> None:
    global _heartbeat
    if _heartbeat is not None:  # first: it calls into the store the process group owns
        _heartbeat.stop()
        _heartbeat = None
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
