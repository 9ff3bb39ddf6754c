"""What a training run checks before it writes anything, and what a resume checks before it trusts a checkpoint.

Why it is built this way: on a shared cluster the failures that lose data are not crashes but
runs that should not have started: a second job training the same stage (a re-run hook, a pod
restarted while the old one still runs, a second `helm install`), a stage file edited between a
checkpoint and its resume, ranks started from two different stage files, an output that cannot
be written found out after a week of training. Each is refused here, before the first step, with
one line naming what is wrong; every rank reaches the same verdict (a problem on one rank is
shared with all, so no rank is left waiting in a collective).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from motif.config import StageConfig, to_dict
from motif.errors import CheckpointError, MotifError
from motif.storage import jsonfile
from motif.train import dist
from motif.train.dist import World

if TYPE_CHECKING:
    from motif.storage.lease import Lease

log = logging.getLogger(__name__)

TRAINED_FILE = "trained.json"  # in a stage's output: which stage wrote it, after how many steps

# Settings whose change between a checkpoint and its resume would change the data order or the
# meaning of the saved state: refused, naming the key. Everything else (the learning-rate
# schedule, clipping, checkpoint cadence, logging) is applied with a warning.
REFUSED = (
    "data.tokenizer",
    "data.seq_len",
    "data.sources",
    "data.seed",
    "data.shards",
    "data.streaming",
    "train.micro_batch_size",
    "train.grad_accum_steps",
    "train.freeze",
    "optim.beta1",
    "optim.beta2",
    "optim.eps",
    "parallel.engine",
    "input",
    "model",
    "growth",
)
WARNED = (
    "optim.lr",
    "optim.min_lr",
    "optim.warmup_steps",
    "optim.rewarm_steps",
    "optim.weight_decay",
    "optim.grad_clip",
    "train.max_steps",
    "train.precision",
    "train.nan_policy",
    "train.max_skipped_steps",
    "train.seed",
    "parallel.world_size",
)


def preflight(stage: StageConfig) -> None:
    """Writable destinations and a replaceable output, checked before anything is read or written."""
    from motif.storage.atomic import check_replaceable
    from motif.storage.space import check_writable

    where = stage.source_file or stage.name
    try:
        check_writable(stage.checkpoint.dir, "motif.checkpoint.dir", replaced=False)
        check_writable(stage.output, "motif.output")
        sources = [p for p in (stage.input, stage.start_checkpoint) if p]
        check_replaceable(stage.output, overwrite=True, sources=sources)
    except MotifError as e:
        raise type(e)(f"{where}: {e}") from None


def check_same_stage_file(stage: StageConfig, world: World) -> None:
    """Every rank trains the same stage: a hash of its `motif:` section, all-gathered at start."""
    if not world.distributed:
        return
    import torch.distributed as tdist

    digest = hashlib.sha256(json.dumps(to_dict(stage), sort_keys=True).encode()).hexdigest()[:16]
    digests: list[str] = [""] * world.world_size
    tdist.all_gather_object(digests, digest)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise MotifError(
            f"{stage.source_file or stage.name}: ranks {', '.join(map(str, odd))} run another stage file than rank 0 "
            f"(motif: section hash {digests[odd[0]]} != {digests[0]}); every rank must get the same file"
        )


def job_lease(stage: StageConfig, world: World) -> Lease | None:
    """The lease of the stage's checkpoint directory, held by rank 0 for the whole job (None elsewhere).

    One lease per job: rank 0 takes it and every rank learns whether it did, so a second job of the
    same stage fails on all its ranks with one line naming the holder.
    """
    from motif.storage.lease import STALE_S, LeaseError, acquire

    lease, problem = None, None
    if world.is_main:
        try:
            # Another job fails at once; this pod's own predecessor (recreated on another node, same
            # name) is waited for until its heartbeat goes stale.
            lease = acquire(
                stage.checkpoint.dir, f"motif train {stage.name}", wait_s_same_host=STALE_S + 15, inside=True
            )
        except LeaseError as e:
            problem = str(e)
    problem = dist.first_problem(world, problem)
    if problem is not None:
        raise LeaseError(f"{stage.source_file or stage.name}: motif.checkpoint.dir: {problem}")
    return lease


# ---- settings a checkpoint is bound to ---------------------------------------------------------


def settings(stage: StageConfig, world: World) -> dict[str, Any]:
    """The training-relevant settings recorded in every checkpoint (dotted key -> value)."""
    d = to_dict(stage)
    out = {key: _get(d, key) for key in REFUSED + WARNED if key != "parallel.world_size"}
    out["parallel.world_size"] = world.world_size
    return out


def compare_settings(recorded: dict[str, Any], current: dict[str, Any], path: Path, where: str) -> None:
    """Refuse a resume whose stage file changed what the checkpoint's state means; warn about the rest."""
    for key in REFUSED:
        if key in recorded and recorded[key] != current.get(key):
            raise CheckpointError(
                f"{where}: motif.{key}: {_show(current.get(key))}, but {path} was written with "
                f"{_show(recorded[key])}; resuming would change the data order or the meaning of its state "
                f"(restore the setting, or start over with --resume none and another motif.checkpoint.dir)"
            )
    for key in WARNED:
        if key in recorded and recorded[key] != current.get(key):
            log.warning(
                "motif.%s: %s (checkpoint %s: %s): applied from here on",
                key,
                _show(current.get(key)),
                path,
                _show(recorded[key]),
            )


def data_identity(stage: StageConfig, world: World) -> dict[str, dict[str, Any]]:
    """Collective: size and checksum of every local data file (`{path: {"size", "checksum"}}`), the
    ranks sharing the reading. A resume compares them with its checkpoint's: a source appended to or
    edited since reads its documents in another order (trained ones again, others never), and paths,
    sizes and times are not content. Hub datasets are named by their id, config and split only."""
    from motif.data.sources import local_files
    from motif.storage import integrity

    files = sorted({f for src in stage.data.sources if src.path is not None for f in local_files(src.path)[1]})
    mine = integrity.checksums(".", files[world.rank :: world.world_size])
    return dist.gather_dicts(world, mine)


def compare_data(recorded: dict[str, Any] | None, current: dict[str, Any], path: Path, stage: StageConfig) -> None:
    """Refuse a resume whose data files are not the ones its checkpoint was trained on."""
    if recorded is None:  # a checkpoint written before data files were recorded
        return
    where = stage.source_file or stage.name
    for name in sorted(set(recorded) | set(current)):
        was, now = recorded.get(name), current.get(name)
        if was == now:
            continue
        if was is None:
            what = "is a new file"
        elif now is None:
            what = "is gone"
        elif now["size"] > was["size"]:
            what = f"was appended to ({was['size']:,} -> {now['size']:,} bytes)"
        elif now["size"] != was["size"]:
            what = f"was cut ({was['size']:,} -> {now['size']:,} bytes)"
        else:
            what = f"has other content (same size, checksum {was['checksum']} -> {now['checksum']})"
        source = next((s.name for s in stage.data.sources if s.path and _in_source(name, s.path)), "?")
        raise CheckpointError(
            f"{where}: motif.data.sources ({source!r}): {name} {what} since {path} was written; resuming would "
            "read the documents in another order (restore the data, or start over with --resume none)"
        )


def _in_source(name: str, path: str) -> bool:
    from motif.data.sources import local_files

    try:
        return name in local_files(path)[1]
    except MotifError:
        return False


def _get(d: dict[str, Any], key: str) -> Any:
    value: Any = d
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


# ---- a finished stage ----------------------------------------------------------------------------


def finished(stage: StageConfig) -> dict[str, Any] | None:
    """What `trained.json` in the stage's output says (stage, steps), or None if it has none."""
    file = Path(stage.output) / TRAINED_FILE
    record = jsonfile.read_json(file, missing_ok=True)
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("steps"), int) or "stage" not in record:
        raise CheckpointError(f"{file}: expected an object with stage and steps (written by motif train)")
    return record


def refuse_fewer_steps(stage: StageConfig, max_steps: int) -> bool:
    """True if the stage is already done (its output holds `max_steps` steps of it); refuse to replace
    a finished stage by a run with fewer steps."""
    record = finished(stage)
    if record is None or record["stage"] != stage.name:
        return False
    if record["steps"] > max_steps:
        raise CheckpointError(
            f"{stage.source_file or stage.name}: {stage.output} holds stage {stage.name} trained {record['steps']} "
            f"steps; a run of {max_steps} steps would replace it with less (raise --max-steps, or write elsewhere)"
        )
    steps: int = record["steps"]  # an int: `finished` checked it
    return steps == max_steps
