"""The safetensors file format, read and written one tensor at a time.

motif reads and writes safetensors itself (the format is an 8-byte header length, a JSON header,
then raw little-endian tensor bytes) rather than through the `safetensors` package because:

* growth streams a 200 GB checkpoint tensor by tensor, and copies unchanged tensors byte for byte
  with `copy_file_range` without ever decoding them;
* `safe_open` hands out mmap views that share storage, which `save_file` refuses, and its errors do
  not say which file is truncated; every error here is a `CheckpointError` naming the file;
* `safetensors.save_file` writes mode 0600 whatever the umask, unreadable by a pod of another UID;
* the writer hashes every byte as it writes it (`close()` returns the file's checksum), so a
  checkpoint's checksums cost no second read of what was just written.

Nothing here ever unpickles anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from motif.errors import CheckpointError
from motif.storage.direct import DirectWriter
from motif.storage.integrity import FileStream, Hasher

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 2**20
FILE_MODE = 0o644
_COPY_CHUNK = 1 << 30
_HASH_CHUNK = 16 << 20
_VERIFY_CHUNK = 4 << 20  # read, then hashed while in the CPU cache (a few MB of L2/L3)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype, shape and absolute byte offset."""

    path: Path
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute, from the start of the file
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and check a header: every tensor lies inside the file and the file is not truncated."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", raw_len)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{path}: corrupt or truncated safetensors header (declares {n} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_len = 8 + n, size - 8 - n
    entries: dict[str, TensorEntry] = {}
    end_max = 0
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name}: bad header entry {info!r}") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{path}: tensor {name}: offsets {begin}..{end} do not hold shape {list(shape)}")
        if end > data_len:
            raise CheckpointError(
                f"{path}: truncated: tensor {name} ends at byte {data_start + end}, the file has {size} bytes"
            )
        end_max = max(end_max, end)
        entries[name] = TensorEntry(path, name, dtype, shape, data_start + begin, nbytes)
    if end_max != data_len:
        raise CheckpointError(f"{path}: {data_len - end_max} trailing bytes after the last tensor (corrupt file)")
    return entries, metadata


def read_tensor(entry: TensorEntry, fd: int | None = None, stream: FileStream | None = None) -> torch.Tensor:
    """Read one tensor into fresh memory it owns (no mmap view shared with anything)."""
    buf = bytearray(entry.nbytes)
    handle = os.open(entry.path, os.O_RDONLY) if fd is None else fd
    try:
        read_into_buffer(entry, memoryview(buf), handle, stream)
    finally:
        if fd is None:  # opened here
            os.close(handle)
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    return torch.frombuffer(buf, dtype=entry.dtype).reshape(entry.shape)


def map_tensor(entry: TensorEntry, fd: int) -> torch.Tensor:
    """The entry as a read-only tensor over the file's pages in the page cache: no copy into memory
    of its own, and none of the page faults fresh memory costs. The mapping lives as long as the
    tensor (and anything viewing it); the tensor must never be written (it would fault). For a
    source that nothing else writes while it is read, as a growth's input."""
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    try:
        # From a cold cache, faulting the pages in would read 128 KB at a time (the fault path's
        # readahead); asked for the whole range first, the kernel reads it in large requests.
        os.posix_fadvise(fd, entry.offset, entry.nbytes, os.POSIX_FADV_WILLNEED)
        mapping, skip = _map_pages(fd, entry.offset, entry.nbytes)
    except OSError as e:
        raise CheckpointError(f"{entry.path}: cannot read tensor {entry.name}: {e.strerror or e}") from None
    return frombuffer_readonly(memoryview(mapping)[skip:], entry.dtype).reshape(entry.shape)


def read_into_buffer(entry: TensorEntry, view: memoryview, fd: int, stream: FileStream | None = None) -> None:
    """Fill `view` (entry.nbytes long) with the entry's bytes read from `fd`, or raise CheckpointError.

    With a `stream`, the bytes are hashed as they arrive, a chunk at a time while the chunk is still
    in the CPU's cache: the checksum costs no second read of the file.
    """
    done = 0
    step = _VERIFY_CHUNK if stream is not None else entry.nbytes
    try:
        while done < entry.nbytes:
            n = os.preadv(fd, [view[done : done + step]], entry.offset + done)
            if n == 0:
                raise CheckpointError(f"{entry.path}: truncated while reading tensor {entry.name}")
            if stream is not None:
                stream.feed(entry.offset + done, view[done : done + n])
            done += n
    except OSError as e:
        raise CheckpointError(f"{entry.path}: cannot read tensor {entry.name}: {e.strerror or e}") from None


class SafetensorsWriter:
    """Writes one file whose tensor list is known up front, in that order, tensor by tensor.

    The header comes first, so every tensor's place is fixed before any data is written; a tensor
    can then be written from memory, copied byte for byte from another file, or zero-filled. Every
    byte is fed, in file order, to the checksum `close()` returns.
    """

    def __init__(
        self,
        path: Path,
        specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
        writeback: Writeback | None = None,
        direct: bool = False,
    ) -> None:
        """`writeback`: where `close()` hands the file to have its writeback started and be closed
        while the next file is written; without one, `close()` does that itself. `direct`: write
        past the page cache on a thread of its own (`DirectWriter`), for files written from memory
        while the caller computes the next tensor (such a file takes no `copy`)."""
        self.path = path
        self._writeback = writeback
        header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        self._order: list[tuple[str, int]] = []
        offset = 0
        for name, dtype, shape in specs:
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._order.append((name, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
        self._next = 0
        self._hasher = Hasher()
        self._reader = _ReadThrough()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        os.fchmod(self._fd, FILE_MODE)  # the umask must not make it private
        self._direct = DirectWriter(self._fd, path) if direct else None
        head = struct.pack("<Q", len(raw)) + raw
        self._put(memoryview(head))
        self._hasher.update(head)

    def _put(self, data: memoryview) -> None:
        if self._direct is not None:
            self._direct.write(data)
        else:
            _write_all(self._fd, data)

    def _expect(self, name: str) -> int:
        want, nbytes = self._order[self._next]
        if name != want:
            raise RuntimeError(f"{self.path}: tensor {name} written out of order (expected {want})")
        self._next += 1
        return nbytes

    def write(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = self._expect(name)
        t = tensor.detach().contiguous().cpu()
        if t.numel() * t.element_size() != nbytes:
            raise RuntimeError(
                f"{self.path}: tensor {name} has {t.numel() * t.element_size()} bytes, expected {nbytes}"
            )
        if nbytes:
            data = t.view(-1).view(torch.uint8).numpy().data
            self._put(data)
            self._hasher.update(data)

    def copy(
        self, name: str, src_fd: int, src_offset: int, on_read: Callable[[int, memoryview], None] | None = None
    ) -> None:
        """Copy the tensor's bytes from another file without decoding them (kernel copy where possible;
        server-side on NFS 4.2). The checksum reads the same range of the source where the copy just
        put it, in the page cache, mapped rather than copied out; `on_read(offset, bytes)` sees those
        bytes too (16 MB windows, each valid only during the call)."""
        nbytes, done = self._expect(name), 0
        consumers: list[Callable[[int, memoryview], None]] = [lambda offset, data: self._hasher.update(data)]
        if on_read is not None:
            consumers.append(on_read)
        if self._direct is not None:  # its ring tracks the file's offset; a kernel copy would not
            raise RuntimeError(f"{self.path}: a file written past the page cache takes no kernel copies")
        while done < nbytes:
            chunk = min(nbytes - done, _COPY_CHUNK)
            try:
                n = os.copy_file_range(src_fd, self._fd, chunk, src_offset + done)
            except OSError:  # cross-device or unsupported filesystem: plain read/write
                done += self._reader.run(src_fd, src_offset + done, chunk, consumers, write_fd=self._fd)
                continue
            if n == 0:
                raise CheckpointError(f"{name}: source file ended while copying")
            for offset, view in _mapped(src_fd, src_offset + done, n):
                for consume in consumers:
                    consume(offset, view)
            done += n

    def zeros(self, name: str) -> None:
        """An all-zero tensor as a hole in the file: it reads as zeros and costs no disk write."""
        nbytes = self._expect(name)
        if self._direct is not None:  # written: a direct write cannot leave a hole mid-buffer
            self._direct.zeros(nbytes)
        else:
            os.lseek(self._fd, nbytes, os.SEEK_CUR)
        self._hasher.zeros(nbytes)

    def close(self) -> str:
        """Close without waiting for the disk: `atomic_dir` fsyncs every file before the rename, and
        writeback starts now, so it overlaps the writing of the next file. Returns the checksum."""
        if self._next != len(self._order):
            raise RuntimeError(f"{self.path}: {len(self._order) - self._next} tensors were never written")
        finish = None
        if self._direct is not None:  # its thread's last writes are waited for with the writeback
            self._direct.flush()
            finish, self._direct = self._direct.close, None
        else:
            os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_CUR))  # a trailing hole still counts
        fd, self._fd = self._fd, -1
        self._reader.close()
        if self._writeback is not None:
            self._writeback.submit(fd, finish)
        else:
            _start_writeback(fd, finish)
        return self._hasher.text()

    def abort(self) -> None:
        """Close after a failed write (the caller removes the partial file's directory)."""
        if self._direct is not None:
            self._direct.abort()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._reader.close()


class Writeback:
    """A thread that starts the writeback of closed files and closes them, while the caller writes
    the next one. Leaving the `with` block waits for every file and raises the first error (a close
    can report a failed write), so the fsync and rename that follow see files whole and closed."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="motif-writeback")
        self._pending: list[Future[None]] = []

    def submit(self, fd: int, finish: Callable[[], object] | None = None) -> None:
        """`finish`: what the file's writing still has to do first (a direct writer's last writes)."""
        self._pending.append(self._pool.submit(_start_writeback, fd, finish))

    def __enter__(self) -> Writeback:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for pending in self._pending:
                pending.result()
        finally:
            self._pool.shutdown(wait=True)


def _start_writeback(fd: int, finish: Callable[[], object] | None = None) -> None:
    """Start the writeback of a closed file's dirty pages, then close it. Submitting a few hundred MB
    to the disk is CPU work in the kernel (ext4 allocates the blocks now): done on a writeback thread,
    it overlaps the writing of the next file. It also keeps a 200 GB growth from evicting everything
    else from the page cache."""
    try:
        if finish is not None:
            finish()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _mapped(fd: int, offset: int, nbytes: int) -> Iterator[tuple[int, memoryview]]:
    """Bytes [offset, offset + nbytes) of `fd` as read-only views of the page cache, 16 MB at a time:
    a mapping costs no copy into user memory, a quarter of a `pread`'s time for bytes a kernel copy
    has just brought into the cache. A view is valid until the next one is asked for."""
    end = offset + nbytes
    while offset < end:
        stop = min(end, offset + _HASH_CHUNK)
        mapping, skip = _map_pages(fd, offset, stop - offset)
        with mapping:
            whole = memoryview(mapping)
            view = whole[skip:]
            try:
                yield offset, view
            finally:
                view.release()
                whole.release()
        offset = stop


def _map_pages(fd: int, offset: int, nbytes: int) -> tuple[mmap.mmap, int]:
    """A read-only mapping of bytes [offset, offset + nbytes) of `fd`, its pages populated at once, and
    where `offset` falls in it (a mapping starts on a page boundary)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, offset + nbytes - start, flags=flags, prot=mmap.PROT_READ, offset=start), offset - start


def frombuffer_readonly(data: memoryview, dtype: torch.dtype) -> torch.Tensor:
    """A tensor over read-only bytes (a mapped file), only ever read: torch warns that writing it would
    be undefined, which it never is here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(data, dtype=dtype)


class _ReadThrough:
    """Reads a range of a file in 16 MB chunks and hands every chunk, in order, to each consumer
    on its own thread while the next chunk is read: xxh3 and torch release the GIL, so reading,
    hashing and checking overlap on separate cores instead of adding up on one. The buffers and
    threads live as long as the writer (one per output file)."""

    DEPTH = 3

    def __init__(self) -> None:
        self._ring: list[bytearray] = []
        self._workers: list[ThreadPoolExecutor] = []

    def run(
        self,
        fd: int,
        offset: int,
        nbytes: int,
        consumers: list[Callable[[int, memoryview], None]],
        write_fd: int | None = None,
    ) -> int:
        """Read [offset, offset + nbytes) of `fd` (writing it to `write_fd` if given); returns the
        bytes read. A consumer's error is raised here."""
        if not self._ring:
            self._ring = [bytearray(_HASH_CHUNK) for _ in range(self.DEPTH)]
        while len(self._workers) < len(consumers):
            self._workers.append(ThreadPoolExecutor(1))  # one worker each: chunks reach it in order
        pending: list[list[Future[None]]] = [[] for _ in self._ring]
        start, end, i = offset, offset + nbytes, 0
        try:
            while offset < end:
                slot = i % len(self._ring)
                for future in pending[slot]:  # its buffer is free again
                    future.result()
                view = memoryview(self._ring[slot])[: min(_HASH_CHUNK, end - offset)]
                n = os.preadv(fd, [view], offset)
                if n == 0:
                    raise CheckpointError(f"source file ended at byte {offset} while copying")
                view = view[:n]
                if write_fd is not None:
                    _write_all(write_fd, view)
                pending[slot] = [w.submit(c, offset, view) for w, c in zip(self._workers, consumers, strict=False)]
                offset, i = offset + n, i + 1
        except BaseException:
            wait([f for futures in pending for f in futures])  # no worker may still read a buffer
            raise
        for futures in pending:
            for future in futures:
                future.result()
        return offset - start

    def close(self) -> None:
        for w in self._workers:
            w.shutdown(wait=True)
        self._workers, self._ring = [], []


def _write_all(fd: int, data: memoryview) -> None:
    data = memoryview(data).cast("B")
    while len(data):
        data = data[os.write(fd, data) :]
