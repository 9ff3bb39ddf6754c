"""Reading a checkpoint's weight files once, in file order: checksums and finite values together.

Why it is built this way:

* **One pass over the bytes.** Loading or verifying a 140 GB checkpoint is bound by the volume,
  not the CPU. Each weight file is read front to back (header, then every tensor by offset), and
  the same bytes feed the checksum, the NaN/inf check and, when loading, the tensor. Verifying
  while loading costs CPU only (xxh3: 7 GB/s per core), never a second read.
* **Files on threads.** Shards are independent; reading, hashing (xxhash) and torch's checks all
  release the GIL, so a sharded checkpoint is read with several files in flight, which is what a
  shared filesystem needs to reach its bandwidth.
* **Bounded memory when not loading.** Verification alone (what `motif grow` does to its input)
  reads in 16 MB element-aligned chunks: memory stays flat whatever the tensor sizes.
* **A checkpoint without a record** (a Hugging Face download) is still read in full and checked
  for NaN/inf; its checksums are then computed, not compared.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from motif.errors import CheckpointError
from motif.model.safetensors_io import TensorEntry, read_header
from motif.storage import integrity
from motif.storage.reading import open_sequential

CHUNK_BYTES = 16 << 20
Progress = Callable[[int], None]


def check_finite(tensor: torch.Tensor, where: str, name: str) -> None:
    """Raise CheckpointError if `tensor` holds a NaN or an inf (one reduction, no temporary copy)."""
    if tensor.numel() == 0 or not tensor.dtype.is_floating_point:
        return
    low, high = torch.aminmax(tensor.reshape(-1))  # NaN propagates into both
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise CheckpointError(
            f"{where}: tensor {name} holds non-finite values (NaN or inf); the checkpoint is not usable "
            "(use an earlier one)"
        )


def feed_tensor(hashed: integrity.SequentialHash, offset: int, tensor: torch.Tensor) -> None:
    """Feed `hashed` the bytes of a tensor just read from `offset` (fresh memory, as `read_tensor` gives)."""
    if tensor.numel():
        hashed.feed(offset, tensor.reshape(-1).view(torch.uint8).numpy())


def read_file(
    path: Path,
    wanted: set[str] | None,
    *,
    finite: bool = True,
    progress: Progress | None = None,
) -> tuple[str, dict[str, torch.Tensor]]:
    """Read one safetensors file front to back: its checksum and the tensors named in `wanted`
    (each in fresh memory it owns); None reads nothing into tensors (chunked, flat memory)."""
    entries, _ = read_header(path)
    ordered = sorted(entries.values(), key=lambda e: e.offset)
    hasher = integrity.Hasher()
    out: dict[str, torch.Tensor] = {}
    fd = open_sequential(path)
    try:
        data_start = ordered[0].offset if ordered else os.fstat(fd).st_size
        pos = integrity.hash_range(fd, 0, data_start, hasher, path)
        sequential = True
        for e in ordered:
            if e.offset < pos:  # overlapping tensors: not a layout we write; hash the file separately
                sequential = False
            elif e.offset > pos:
                pos = integrity.hash_range(fd, pos, e.offset, hasher, path)
            if wanted is not None and e.name in wanted:
                tensor = _read_tensor(fd, e, hasher if sequential else None)
                if finite:
                    check_finite(tensor, str(path), e.name)
                out[e.name] = tensor
            else:
                _scan_tensor(fd, e, hasher if sequential else None, finite)
            pos = max(pos, e.offset + e.nbytes)
            if progress is not None:
                progress(e.nbytes)
        end = os.fstat(fd).st_size
        if sequential and pos < end:
            integrity.hash_range(fd, pos, end, hasher, path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    checksum = hasher.text() if sequential else integrity.checksum_file(path)
    return checksum, out


def read_weights(
    files: Mapping[Path, set[str] | None],
    *,
    finite: bool = True,
    progress: Progress | None = None,
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """`read_file` over several files on threads: {file name: checksum} and the wanted tensors."""
    threads = max(1, min(integrity.THREADS, len(files)))
    paths = sorted(files)
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda p: read_file(p, files[p], finite=finite, progress=progress), paths))
    sums = {p.name: checksum for p, (checksum, _) in zip(paths, results, strict=True)}
    tensors = {name: t for _, got in results for name, t in got.items()}
    return sums, tensors


def check_record(
    directory: Path,
    record: dict[str, Any] | None,
    computed: dict[str, str],
    *,
    others: bool,
    optional: frozenset[str] = frozenset(),
) -> None:
    """Compare checksums computed while reading with the directory's record.

    Every recorded file must be present with its size. Files read (`computed`) must match; a
    weight file read that the record does not list is refused (written later, by something else);
    files in `optional` (an optimizer file added after the weights) are compared if listed.
    `others`: also read and compare every other recorded file (`motif grow` does; `load` reads only
    the small ones, see `SMALL_FILE_BYTES`).
    """
    if record is None:
        return
    problem = integrity.verify(directory, record, content=False)
    if problem:
        raise CheckpointError(problem)
    for name, checksum in computed.items():
        want = record.get(name)
        if want is None and name in optional:
            continue
        if want is None:
            raise CheckpointError(f"{directory / name}: not in the checksum record {integrity.RECORD_NAME}")
        problem = integrity.compare(directory / name, want, checksum)
        if problem:
            raise CheckpointError(problem)
    rest = {n: w for n, w in record.items() if n not in computed and (others or w["size"] <= SMALL_FILE_BYTES)}
    problem = integrity.verify(directory, rest)
    if problem:
        raise CheckpointError(problem)


SMALL_FILE_BYTES = 64 << 20  # configs, index, tokenizer: hashed by `load` too (milliseconds)


def _read_tensor(fd: int, e: TensorEntry, hasher: integrity.Hasher | None) -> torch.Tensor:
    buf = bytearray(e.nbytes)
    view, done = memoryview(buf), 0
    while done < e.nbytes:
        n = os.preadv(fd, [view[done:]], e.offset + done)
        if n == 0:
            raise CheckpointError(f"{e.path}: truncated while reading tensor {e.name}")
        done += n
    if hasher is not None:
        hasher.update(view)
    if e.nbytes == 0:
        return torch.empty(e.shape, dtype=e.dtype)
    return torch.frombuffer(buf, dtype=e.dtype).reshape(e.shape)


def _scan_tensor(fd: int, e: TensorEntry, hasher: integrity.Hasher | None, finite: bool) -> None:
    step = max(e.dtype.itemsize, CHUNK_BYTES - CHUNK_BYTES % e.dtype.itemsize)
    buf = bytearray(min(step, max(e.nbytes, 1)))
    done = 0
    while done < e.nbytes:
        want = min(len(buf), e.nbytes - done)
        view, filled = memoryview(buf)[:want], 0
        while filled < want:  # whole chunks only: each is a whole number of elements
            n = os.preadv(fd, [view[filled:]], e.offset + done + filled)
            if n == 0:
                raise CheckpointError(f"{e.path}: truncated while reading tensor {e.name}")
            filled += n
        if hasher is not None:
            hasher.update(view)
        if finite and e.dtype.is_floating_point:
            check_finite(torch.frombuffer(view, dtype=e.dtype), str(e.path), e.name)
        done += want
