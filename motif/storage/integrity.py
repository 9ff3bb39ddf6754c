"""Per-file checksums: recorded when a directory is written, verified before it is trusted.

Why it is built this way:

* **xxh3-128, not sha256.** The threat is a bit flip, a copy cut short or a file replaced by
  hand, not an adversary: a fast non-cryptographic hash is enough, and xxh3 runs at memory speed
  (7+ GB/s per core here) where sha256 manages about 0.5 GB/s. At 140 GB a hash costs seconds of
  CPU; reading the bytes costs more, so every hash is computed while the bytes pass through
  memory anyway (at save, while writing; at load, while reading) wherever that is possible.
* **Sizes first.** `verify` compares every file's size before hashing any: a truncated or
  missing file is found in milliseconds, and only then are the bytes read.
* **Files in parallel.** xxhash releases the GIL, so several shards are read and hashed on
  threads at once; shared filesystems (NFS, Lustre, CephFS) give more bandwidth to parallel reads.
* **A hash of chunks, so threads can share a file.** A file's checksum is the xxh3-128 of the
  xxh3-128 digests of its 16 MiB chunks, in order (`xxh3_128-chunks16MiB`). Each chunk's bytes are
  hashed in order, but chunks are independent: two threads that read two halves of one file each
  hash the chunks they read, while those are in cache. One hash over the whole file made the
  second thread's half wait for the first's, hashed after it on one thread (a load of 1.3 GB spent
  0.06 s of its 0.2 s there).
* **Self-describing values.** A checksum is `"<algorithm>:<hex>"`, so a record names its algorithm
  and a later change of algorithm is detected rather than misread. Records of the whole-file hash
  (`xxh3_128:`, written before the chunked one) are still verified, by reading the file once more.

The record of a checkpoint directory is `checksums.json`:
`{"format": "motif-checksums/1", "files": {name: {"size": bytes, "checksum": "xxh3_128-chunks16MiB:..."}}}`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xxhash

from motif.errors import CheckpointError
from motif.storage import jsonfile
from motif.storage.reading import open_sequential

ALGORITHM = "xxh3_128-chunks16MiB"  # what motif records now
WHOLE_FILE = "xxh3_128"  # one xxh3-128 over the file: what earlier records hold (still verified)
HASH_CHUNK = 16 << 20  # the chunk of ALGORITHM: a fixed part of its definition
RECORD_NAME = "checksums.json"
RECORD_FORMAT = "motif-checksums/1"
CHUNK_BYTES = 16 << 20
THREADS = min(8, os.cpu_count() or 1)


class Hasher:
    """A streaming checksum: feed bytes in file order, read `text()` at the end (ALGORITHM, or the
    whole-file hash of earlier records)."""

    def __init__(self, algorithm: str = ALGORITHM) -> None:
        if algorithm not in (ALGORITHM, WHOLE_FILE):
            raise ValueError(f"unknown checksum algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._chunk = xxhash.xxh3_128()
        self._digests: list[bytes] = []  # of the complete chunks (16 bytes per 16 MiB)
        self._left = HASH_CHUNK  # bytes until the chunk is complete (the whole-file hash never completes one)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self.algorithm == WHOLE_FILE:
            self._chunk.update(data)
            return
        data = memoryview(data).cast("B")
        while len(data) >= self._left:
            self._chunk.update(data[: self._left])
            data = data[self._left :]
            self._digests.append(self._chunk.digest())
            self._chunk.reset()
            self._left = HASH_CHUNK
        if len(data):
            self._chunk.update(data)
            self._left -= len(data)

    def zeros(self, nbytes: int) -> None:
        """Feed `nbytes` zero bytes (a hole in a sparse file reads as zeros)."""
        block = _zero_block()
        while nbytes > 0:
            n = min(nbytes, len(block))
            self.update(block[:n])
            nbytes -= n

    def text(self) -> str:
        if self.algorithm == WHOLE_FILE:
            return f"{WHOLE_FILE}:{self._chunk.hexdigest()}"
        last = [self._chunk.digest()] if self._left < HASH_CHUNK else []  # the last chunk, shorter
        return chunked_text(self._digests + last)


def chunked_text(digests: Iterable[bytes]) -> str:
    """ALGORITHM's value of a file from its chunks' digests, in order."""
    tree = xxhash.xxh3_128()
    for digest in digests:
        tree.update(digest)
    return f"{ALGORITHM}:{tree.hexdigest()}"


_ZEROS: list[memoryview] = []


def _zero_block() -> memoryview:
    if not _ZEROS:
        _ZEROS.append(memoryview(bytes(CHUNK_BYTES)))
    return _ZEROS[0]


def checksum_file(path: str | Path, algorithm: str = ALGORITHM) -> str:
    """The checksum of a whole file, read in 16 MB chunks (bounded memory whatever its size)."""
    h = Hasher(algorithm)
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    fd = open_sequential(path)
    try:
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
    finally:
        os.close(fd)
    return h.text()


def entry(path: Path, checksum: str) -> dict[str, Any]:
    return {"size": path.stat().st_size, "checksum": checksum}


def checksums(directory: str | Path, names: Iterable[str], known: dict[str, str] | None = None) -> dict[str, Any]:
    """`{name: {"size", "checksum"}}` for files in `directory`; `known` holds checksums already
    computed while writing (those files are not read again)."""
    directory, known = Path(directory), known or {}
    names = sorted(names)
    todo = [n for n in names if n not in known]
    with ThreadPoolExecutor(THREADS) as pool:
        computed = dict(zip(todo, pool.map(lambda n: checksum_file(directory / n), todo), strict=True))
    return {n: entry(directory / n, known.get(n) or computed[n]) for n in names}


def verify(directory: str | Path, recorded: dict[str, Any], *, content: bool = True) -> str | None:
    """None if every recorded file is present with its recorded size and checksum, else the first
    problem, naming the file. `content=False` checks presence and sizes only (no byte is read)."""
    directory = Path(directory)
    for name, want in sorted(recorded.items()):
        problem = _size_problem(directory / name, want)
        if problem:
            return problem
    if not content:
        return None
    names = sorted(recorded)

    def checksum(name: str) -> str:
        return checksum_file(directory / name, algorithm_of(recorded[name]["checksum"]))

    with ThreadPoolExecutor(THREADS) as pool:
        found = dict(zip(names, pool.map(checksum, names), strict=True))
    for name in names:
        problem = compare(directory / name, recorded[name], found[name])
        if problem:
            return problem
    return None


def hash_range(fd: int, start: int, end: int, hasher: Hasher | xxhash.xxh3_128, path: Path) -> int:
    """Hash bytes [start, end) of the file open as `fd` into `hasher` (16 MB reads); returns `end`."""
    pos = start
    while pos < end:
        data = os.pread(fd, min(CHUNK_BYTES, end - pos), pos)
        if not data:
            raise CheckpointError(f"{path}: truncated while reading")
        hasher.update(data)
        pos += len(data)
    return pos


class SequentialHash:
    """The checksum of a file whose bytes are read in any order and amounts: each byte is hashed once,
    in file order. A read ahead of the hashed prefix hashes the gap first (reading it); a read
    behind it is already counted. A file read front to back, as a grow reads a motif checkpoint or
    a resume its rank's files, is thus hashed from the bytes the work reads anyway, at no extra I/O."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd
        self.hasher = Hasher()
        self.pos = 0  # bytes [0, pos) are in the hash
        self.read_for_hash = 0  # bytes read only to hash them (what the work skipped): a second pass

    def feed(self, offset: int, data: Any) -> None:
        data = memoryview(data).cast("B")
        end = offset + len(data)
        if not len(data) or end <= self.pos:
            return  # nothing read, or read again: already in the hash
        if offset > self.pos:
            self.hash_to(offset)
        self.hasher.update(data[self.pos - offset :])
        self.pos = end

    def finish(self) -> str:
        self.hash_to(os.fstat(self.fd).st_size)
        return self.hasher.text()

    def hash_to(self, end: int) -> None:
        """Hash the file's bytes up to `end`, reading what no caller fed."""
        if self.pos < end:
            self.read_for_hash += end - self.pos
            self.pos = hash_range(self.fd, self.pos, end, self.hasher, self.path)


class FileStream:
    """One file's checksum, taken from the bytes a load reads anyway, as it reads them: each chunk of
    the file (HASH_CHUNK) is hashed in order, each byte once, and what no read reached is read and
    hashed at the end.

    Each piece is hashed by the thread that read it, right after the read, while it is still in the
    CPU's cache: xxh3 runs at 20+ GB/s, ten times a read's speed, so handing pieces to a hashing
    thread cost more in hand-offs than it overlapped (a 54 MB file: 25 ms against 13.5 ms). Several
    threads may read one file at once, each its own range, and each hashes its own chunks; only a
    chunk cut by the boundary between two ranges waits: the piece that arrives ahead of the chunk's
    hashed prefix is kept (a view of where it landed, the destination's memory, which nothing changes
    before the load ends) and hashed once the prefix reaches it. A failure to hash is kept for `finish`.
    """

    def __init__(self, path: Path, want: dict[str, Any]):
        self.path = path
        self.want = want
        self._fd = os.open(path, os.O_RDONLY)  # for the bytes no read reached
        self.size = os.fstat(self._fd).st_size
        self._chunks = [_Chunk(lo, min(lo + HASH_CHUNK, self.size)) for lo in range(0, self.size, HASH_CHUNK)]
        self._failed: BaseException | None = None

    @property
    def hashed(self) -> int:
        """Bytes in the checksum so far."""
        return sum(c.pos - c.start for c in self._chunks)

    @property
    def read_for_hash(self) -> int:
        """Bytes read only to hash them (what the load skipped): a second pass."""
        return sum(c.read_for_hash for c in self._chunks)

    def feed(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """`data`, just read from `offset` of the file: hashed now, or kept until the bytes before it are."""
        data = memoryview(data).cast("B")
        while len(data) and offset < self.size:
            chunk = self._chunks[offset // HASH_CHUNK]
            n = min(len(data), chunk.end - offset)
            chunk.feed(offset, data[:n])
            offset, data = offset + n, data[n:]

    def read_before(self, offset: int) -> None:
        """Hash the bytes before `offset` now, from the file: no load reads them (a safetensors
        header), and until they are hashed every piece read after them in their chunk would wait,
        hashed by `finish` after all the reading."""
        for chunk in self._chunks[: -(-offset // HASH_CHUNK)]:
            try:
                chunk.hash_from_file(self._fd, min(offset, chunk.end), self.path)
            except (CheckpointError, OSError) as e:
                self._failed = e

    def finish(self) -> str | None:
        """The problem with this file, if any, once the bytes no read reached are hashed too."""
        try:
            if self._failed is not None:
                raise self._failed
            for chunk in self._chunks:
                chunk.hash_from_file(self._fd, chunk.end, self.path)
            found = chunked_text(c.digest() for c in self._chunks)
        except CheckpointError as e:
            return str(e)
        except OSError as e:
            return f"{self.path}: cannot read: {e.strerror or e}"
        finally:
            for chunk in self._chunks:
                chunk.ahead.clear()
            os.close(self._fd)
        return compare(self.path, self.want, found)


class _Chunk:
    """One HASH_CHUNK of a file, hashed in order whichever thread brings its bytes (bytes [start, pos)
    are in the hash; pieces read beyond pos wait in `ahead`)."""

    def __init__(self, start: int, end: int):
        self.start, self.end, self.pos = start, end, start
        self.hash = xxhash.xxh3_128()
        self.ahead: dict[int, memoryview] = {}  # offset -> a piece read beyond the hashed prefix
        self.read_for_hash = 0
        self.lock = threading.Lock()

    def feed(self, offset: int, data: memoryview) -> None:
        with self.lock:
            if offset > self.pos:
                kept = self.ahead.get(offset)
                if kept is None or kept.nbytes < data.nbytes:
                    self.ahead[offset] = data
                return
            self._hash(offset, data)
            self._hash_ahead()

    def hash_from_file(self, fd: int, end: int, path: Path) -> None:
        """Hash through `end`, reading from the file what no piece brought."""
        with self.lock:
            self._hash_ahead()
            while self.pos < end:
                stop = min([end, *(o for o in self.ahead if o > self.pos)])
                self.read_for_hash += stop - self.pos
                self.pos = hash_range(fd, self.pos, stop, self.hash, path)
                self._hash_ahead()

    def digest(self) -> bytes:
        return self.hash.digest()

    def _hash(self, offset: int, data: memoryview) -> None:
        end = offset + data.nbytes
        if end > self.pos:  # else read again: already in the hash
            self.hash.update(data[self.pos - offset :])
            self.pos = end

    def _hash_ahead(self) -> None:
        """Hash the pieces kept ahead that the hashed prefix has now reached (the lock held)."""
        while self.ahead and min(self.ahead) <= self.pos:
            first = min(self.ahead)
            self._hash(first, self.ahead.pop(first))


class ReadVerifier:
    """The checksums of a directory's files, checked from the bytes a load reads (one pass, not two).

    The loader asks `stream(path)` for each file it reads and feeds it what it reads; `finish` then
    completes and compares every file that was fed. Files nobody fed are left to `verify`. Each
    chunk is hashed by the thread that read it (xxhash releases the GIL while it hashes).
    """

    def __init__(self, directory: str | Path, recorded: dict[str, Any]):
        self.directory = Path(directory)
        self.recorded = recorded
        self.streams: dict[str, FileStream] = {}
        self._lock = threading.Lock()  # one stream per file, whichever thread asks first

    def stream(self, path: str | Path) -> FileStream | None:
        """The stream of `path` (a file of the directory, or of a folder in it), None for a file
        without a recorded checksum (nothing to check)."""
        path = Path(path)
        try:
            name = str(path.relative_to(self.directory))
        except ValueError:
            return None
        if name not in self.recorded:
            return None
        with self._lock:
            if name not in self.streams:
                self.streams[name] = FileStream(path, self.recorded[name])
            return self.streams[name]

    def share(self, files: list[Path], rank: int, world: int) -> list[ReadVerifier | None]:
        """For each of `files` (in the same order on every rank): this verifier where this rank hashes
        that file, None elsewhere. Each file is hashed by one rank (file i by rank i mod world: a
        rank's own file when the world size is the one that wrote them), whoever else reads from it,
        so no rank reads another's file again only to hash it."""
        return [self if i % world == rank else None for i in range(len(files))]

    def whole(self, path: str | Path, data: bytes) -> None:
        """A file read whole into memory (a small JSON record): hashed from those bytes."""
        stream = self.stream(path)
        if stream is not None:
            stream.feed(0, data)

    def finish(self) -> tuple[str | None, list[str]]:
        """(the first problem or None, the names of the files checked here). Waits for the hashing."""
        names = sorted(self.streams)
        problems = [self._problem(name) for name in names]  # every stream finished: no thread left running
        return next((p for p in problems if p), None), names

    def _problem(self, name: str) -> str | None:
        stream = self.streams[name]
        problem = stream.finish()
        return _size_problem(self.directory / name, self.recorded[name]) or problem


def _size_problem(path: Path, want: Any) -> str | None:
    if not isinstance(want, dict) or not isinstance(want.get("size"), int) or not isinstance(want.get("checksum"), str):
        return f"{path}: bad checksum record entry {want!r} (expected size and checksum)"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing (the checksum record lists it)"
    except OSError as e:
        return f"{path}: cannot read: {e.strerror or e}"
    if size != want["size"]:
        return f"{path}: {size} bytes, the checksum record says {want['size']} (truncated or replaced)"
    return None


def algorithm_of(checksum: str) -> str:
    """The algorithm a recorded checksum names (ALGORITHM when it names none motif knows: `compare`
    reports that)."""
    name = checksum.split(":", 1)[0]
    return name if name in (ALGORITHM, WHOLE_FILE) else ALGORITHM


def compare(path: Path, want: dict[str, Any], found: str) -> str | None:
    """The problem if checksum `found` (ALGORITHM's, or the recorded algorithm's) of `path` is not
    the recorded one. A record of the whole-file hash is checked by hashing the file that way now."""
    recorded = want["checksum"]
    if not recorded.startswith((f"{ALGORITHM}:", f"{WHOLE_FILE}:")):
        return f"{path}: checksum {recorded!r} uses an unknown algorithm (expected {ALGORITHM})"
    if algorithm_of(recorded) != algorithm_of(found):
        try:
            found = checksum_file(path, algorithm_of(recorded))
        except OSError as e:
            return f"{path}: cannot read: {e.strerror or e}"
    if found != recorded:
        return f"{path}: checksum mismatch: the content changed after it was written (corrupt or edited)"
    return None


# ---- the record file ---------------------------------------------------------------------------


def write_record(directory: str | Path, files: dict[str, Any], mode: int = 0o644) -> None:
    """Write `checksums.json` into `directory` (inside a temporary directory before its rename)."""
    path = Path(directory) / RECORD_NAME
    text = json.dumps({"format": RECORD_FORMAT, "files": files}, indent=1, sort_keys=True) + "\n"
    jsonfile.write_text(path, text, mode)


def read_record(directory: str | Path) -> dict[str, Any] | None:
    """The recorded files of `directory`, or None when it has no record (an HF download, say).
    A record that is not valid is a CheckpointError naming it: it is never silently ignored."""
    path = Path(directory) / RECORD_NAME
    doc = jsonfile.read_json(path, missing_ok=True)
    if doc is None:
        return None
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT or not isinstance(doc.get("files"), dict):
        raise CheckpointError(f"{path}: format: expected {RECORD_FORMAT!r} with a files mapping")
    for name, want in doc["files"].items():
        if not name or "/" in name or name.startswith(".") or not name.isprintable():
            raise CheckpointError(f"{path}: files: {name!r} is not a file name of this directory")
        problem = _entry_problem(want)
        if problem:
            raise CheckpointError(f"{path}: files.{name}: {problem}")
    return doc["files"]


def _entry_problem(want: Any) -> str | None:
    if not isinstance(want, dict):
        return f"expected a mapping with size and checksum, got {want!r}"
    size, checksum = want.get("size"), want.get("checksum")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return f"size: expected a byte count, got {size!r}"
    if not isinstance(checksum, str):
        return f"checksum: expected a string like '{ALGORITHM}:...', got {checksum!r}"
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
