"""Checkpoint directories in the Hugging Face layout: `config.json` plus safetensors weights.

Why it is built this way:

* **Same layout as transformers** (one `model.safetensors`, or shards `model-0000i-of-0000n.safetensors`
  with `model.safetensors.index.json`), so a finished stage is loaded by transformers, vLLM or motif
  alike, and a Hugging Face download is a valid input. Tensor names are HF's; no renaming.
* **A model whose growth masks are below 1 is not a Llama.** Its config gets motif's own model_type
  and its weights go under `motif-model*.safetensors`, a name transformers never looks for, so
  `LlamaForCausalLM.from_pretrained` fails instead of silently computing a different function.
* **Never a half checkpoint, never a lost directory.** Everything is written into a hidden
  temporary directory next to the destination, fsynced, then renamed into place
  (`motif.storage.atomic`); an existing destination is replaced only if it is a checkpoint.
* **Checkpoints that prove themselves.** `save` records every file's size and xxh3 checksum in
  `checksums.json`; `load` checks them while it reads the weights (the bytes pass through memory
  anyway, so the check costs CPU, not I/O) and refuses NaN/inf weights, naming file and tensor.
  `save` refuses to write a model with NaN/inf weights at all.
* **0644 files, no pickle.** A `.bin` is refused, never unpickled; modes are set explicitly.
* **Checked before use.** `open_checkpoint` reads only headers and checks every tensor against the
  shape `config.json` implies, so a bad checkpoint fails in seconds with the file and tensor named,
  before anything reads a weight.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from motif.errors import CheckpointError
from motif.model import verify
from motif.model.args import ModelArgs
from motif.model.model import Llama
from motif.model.safetensors_io import FILE_MODE, SafetensorsWriter, TensorEntry, read_header
from motif.storage import integrity, jsonfile
from motif.storage.atomic import DIR_MODE, atomic_dir, fsync_path  # noqa: F401  (re-exported: callers import them here)
from motif.storage.space import check_free_space

if TYPE_CHECKING:
    from motif.storage.lease import Lease

CONFIG_NAME = "config.json"
PROVENANCE_NAME = "growth.json"
OPTIMIZER_NAME = "optimizer.safetensors"
PLAIN_PREFIX = "model"  # what transformers reads
GROWING_PREFIX = "motif-model"  # masks below 1: a name transformers does not read
CHECKSUMS_NAME = integrity.RECORD_NAME
DEFAULT_SHARD_BYTES = 5 * 2**30
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class Checkpoint:
    """A checked checkpoint directory: its shape and where each tensor lives. No weight read yet."""

    path: Path
    args: ModelArgs
    entries: dict[str, TensorEntry]  # in the order of `args.tensor_shapes()`

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.entries.values())).dtype


def to_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    found = names.get(dtype) or getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise CheckpointError(f"dtype: unknown dtype {dtype!r} (expected fp32, bf16, fp16 or fp64)")
    return found


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- reading ---------------------------------------------------------------------------------


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (does not exist or is not a directory)")
    cfg = path / CONFIG_NAME
    try:
        config = json.loads(cfg.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{cfg}: missing; a checkpoint directory needs config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg}: unreadable or not JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg}: expected a JSON object")
    return config


def read_args(path: str | Path) -> ModelArgs:
    """The shape declared by a checkpoint's config.json (weights not read)."""
    path = Path(path)
    config = read_config(path)
    model_type = config.get("model_type", "llama")
    if model_type not in ("llama", "motif_growing_llama"):
        raise CheckpointError(f"{path / CONFIG_NAME}: model_type: expected llama, got {model_type!r}")
    try:
        return ModelArgs.from_hf_config(config)
    except CheckpointError as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: {e}") from None


def weight_files(path: Path, args: ModelArgs) -> dict[str, Path]:
    """Tensor name -> file, from the index or the single weights file. Refuses pickle formats."""
    prefix = GROWING_PREFIX if args.growth is not None else PLAIN_PREFIX
    index, single = path / f"{prefix}.safetensors.index.json", path / f"{prefix}.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {name: path / str(file) for name, file in weight_map.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: corrupt index ({type(e).__name__}: {e})") from None
        for name, file in files.items():
            if not file.is_file():
                raise CheckpointError(f"{file}: missing shard (named by {index.name} for tensor {name})")
        return files
    if single.is_file():
        entries, _ = read_header(single)
        return dict.fromkeys(entries, single)
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{path / pickles[0]}: pickle checkpoints are refused (they can run code when loaded); "
            "convert to safetensors first"
        )
    other = GROWING_PREFIX if prefix == PLAIN_PREFIX else PLAIN_PREFIX
    if (path / f"{other}.safetensors").exists() or (path / f"{other}.safetensors.index.json").exists():
        raise CheckpointError(
            f"{path}: weights are under {other}*.safetensors but config.json says "
            f"{'growth masks are pending' if args.growth else 'no growth is pending'}: expected {single.name}"
        )
    raise CheckpointError(f"{path}: unknown format: no {single.name} or {index.name} (safetensors weights)")


def open_checkpoint(path: str | Path, args: ModelArgs | None = None) -> Checkpoint:
    """Check a checkpoint from its config and headers: all shards present, intact, right shapes.

    `args`: its shape when the caller has already read config.json (`read_args`), so it is not read again.
    """
    path = Path(path)
    args = read_args(path) if args is None else args
    files = weight_files(path, args)
    headers: dict[Path, dict[str, TensorEntry]] = {}
    for file in dict.fromkeys(files.values()):
        headers[file] = read_header(file)[0]
    expected = args.tensor_shapes()
    entries: dict[str, TensorEntry] = {}
    for name, shape in expected.items():
        found = files.get(name)
        if found is None:
            raise CheckpointError(f"{path}: tensor {name} missing from the weights (expected shape {list(shape)})")
        file = found
        entry = headers[file].get(name)
        if entry is None:
            raise CheckpointError(f"{file}: tensor {name} missing (the index says it is in this file)")
        if entry.shape != shape:
            raise CheckpointError(
                f"{file}: tensor {name} has shape {list(entry.shape)}, config.json implies {list(shape)}"
            )
        if not entry.dtype.is_floating_point:
            raise CheckpointError(f"{file}: tensor {name} has dtype {entry.dtype}, expected a float type")
        entries[name] = entry
    extra = sorted(set(files) - set(expected) - {"lm_head.weight"})  # some tied checkpoints keep the head
    if extra:
        raise CheckpointError(f"{files[extra[0]]}: unexpected tensor {extra[0]} for the shape in config.json")
    return Checkpoint(path, args, entries)


def load(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu") -> Llama:
    """Load a checkpoint directory as a `Llama` in eval mode (fp32 unless `dtype` says otherwise).

    The weight files are read once, front to back, several at a time; their checksums are checked
    against `checksums.json` when the checkpoint has one, and every tensor is checked for NaN/inf.
    """
    ckpt = open_checkpoint(path)
    dtype = to_dtype(dtype) or torch.float32
    files: dict[Path, set[str]] = {}
    for name, entry in ckpt.entries.items():
        files.setdefault(entry.path, set()).add(name)
    record = integrity.read_record(ckpt.path)
    sums, raw = verify.read_weights(files)
    verify.check_record(ckpt.path, record, sums, others=False)
    state = {name: raw.pop(name).to(device=device, dtype=dtype) for name in ckpt.entries}
    return Llama.from_state_dict(ckpt.args, state, device).eval()


def verify_checkpoint(
    ckpt: Checkpoint, progress: verify.Progress | None = None, *, rank: int = 0, world: int = 1
) -> dict[str, str]:
    """Read every byte of a checkpoint once: checksums against its record (all recorded files),
    NaN/inf in every tensor, in bounded memory. Returns the weight files' checksums (computed,
    never copied from the record), which `motif grow` fingerprints its input with.

    `rank`/`world`: verify only this rank's share of the files (file i goes to rank i % world), so
    the ranks of a job verify a start checkpoint together, each reading 1/world of it; every rank
    still checks every recorded file's presence and size. Raises CheckpointError naming the file.
    """
    weight_files = sorted({e.path for e in ckpt.entries.values()})
    mine = weight_files[rank::world]
    record = integrity.read_record(ckpt.path)
    sums, _ = verify.read_weights(dict.fromkeys(mine), progress=progress)
    if record is not None:
        weights = {p.name for p in weight_files}
        others = sorted(n for n in record if n not in weights)[rank::world]
        share = {n: w for n, w in record.items() if n in others or n in sums}
        problem = integrity.verify(ckpt.path, record, content=False)
        if problem:
            raise CheckpointError(problem)
        verify.check_record(ckpt.path, share, sums, others=True)
    return sums


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    """The growth provenance (`growth.json`) of a grown checkpoint, or None if it was not grown."""
    file = Path(path) / PROVENANCE_NAME
    provenance: dict[str, Any] | None = jsonfile.read_json(file, missing_ok=True)
    return provenance


# ---- writing ---------------------------------------------------------------------------------


def write_text(path: Path, text: str) -> None:
    jsonfile.write_text(path, text, FILE_MODE)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


Spec = tuple[str, torch.dtype, tuple[int, ...]]


def pack_in_order(sizes: Sequence[int], cap: int) -> list[list[int]]:
    """The indices of `sizes`, in order, in runs whose sums stay within `cap` (an item larger than
    `cap` gets a run of its own). Greedy, which is optimal for a fixed cap when order is kept."""
    runs: list[list[int]] = [[]]
    load = 0
    for k, size in enumerate(sizes):
        if runs[-1] and load + size > cap:
            runs.append([])
            load = 0
        runs[-1].append(k)
        load += size
    return runs


def plan_shards(specs: list[Spec], max_shard_bytes: int) -> list[list[Spec]]:
    """Split tensors, in order, into files of at most `max_shard_bytes` (a larger tensor gets its own)."""
    sizes = [math.prod(shape) * dtype.itemsize for _, dtype, shape in specs]
    return [[specs[k] for k in run] for run in pack_in_order(sizes, max_shard_bytes)]


def shard_names(args: ModelArgs, count: int) -> list[str]:
    prefix = GROWING_PREFIX if args.growth is not None else PLAIN_PREFIX
    if count == 1:
        return [f"{prefix}.safetensors"]
    return [f"{prefix}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_index(directory: Path, args: ModelArgs, shards: list[list[Spec]], names: list[str]) -> None:
    """config.json, and the index when the weights are sharded."""
    write_json(directory / CONFIG_NAME, args.to_hf_config())
    if len(shards) > 1:
        prefix = GROWING_PREFIX if args.growth is not None else PLAIN_PREFIX
        total = sum(math.prod(s[2]) * s[1].itemsize for shard in shards for s in shard)
        weight_map = {spec[0]: file for shard, file in zip(shards, names, strict=True) for spec in shard}
        write_json(
            directory / f"{prefix}.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
        )


def save(
    model: Llama,
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = True,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    optimizer: dict[str, torch.Tensor] | None = None,
    lease: Lease | None = None,
) -> None:
    """Write `model` as a checkpoint directory (weights in `dtype`, default the model's own).

    `optimizer`: tensors written alongside as `optimizer.safetensors` (a stage's final output).
    Before any byte is written: NaN/inf weights are refused, and the volume must hold the whole
    output. `checksums.json` records every file. `lease`: the held lease of `path`, if any.
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    model = getattr(model, "module", model)  # DistributedDataParallel wrapper
    params = dict(model.state_dict())
    dtype = to_dtype(dtype) or params["model.embed_tokens.weight"].dtype
    args = model.args.replace(torch_dtype=dtype_name(dtype))
    shapes = args.tensor_shapes()
    specs = [(name, dtype, shape) for name, shape in shapes.items()]
    for name, shape in shapes.items():
        if tuple(params[name].shape) != shape:
            raise CheckpointError(f"{name}: model tensor has shape {list(params[name].shape)}, args say {list(shape)}")
        verify.check_finite(params[name].detach(), f"{path}: not written", name)
    optimizer = dict(optimizer or {})
    opt_specs = [(name, t.dtype, tuple(t.shape)) for name, t in optimizer.items()]
    total = sum(math.prod(shape) * dt.itemsize for _, dt, shape in [*specs, *opt_specs])
    check_free_space(Path(path).parent, total, f"checkpoint {path}")
    shards = plan_shards(specs, max_shard_bytes)
    names = shard_names(args, len(shards))
    with atomic_dir(path, overwrite, lease=lease) as tmp:
        known = {}
        for shard, file in zip(shards, names, strict=True):
            writer = SafetensorsWriter(tmp / file, shard)
            for name, _, _ in shard:
                writer.write(name, params[name].to(dtype))
            known[file] = writer.close()
        if optimizer:
            writer = SafetensorsWriter(tmp / OPTIMIZER_NAME, opt_specs)
            for name, tensor in optimizer.items():
                writer.write(name, tensor)
            known[OPTIMIZER_NAME] = writer.close()
        write_index(tmp, args, shards, names)
        record_checksums(tmp, known)


def record_checksums(directory: Path, known: dict[str, str] | None = None) -> dict[str, Any]:
    """Write `checksums.json` for every plain file in `directory` (call it last, in the temporary
    directory). `known`: checksums computed while writing; the other files are read and hashed."""
    names = [
        p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != CHECKSUMS_NAME
    ]
    files = integrity.checksums(directory, names, known)
    integrity.write_record(directory, files, FILE_MODE)
    return files
