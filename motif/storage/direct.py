"""Sequential writes that bypass the page cache (O_DIRECT), overlapped with the caller's work.

A buffered write costs the writing process CPU: every byte is copied into a newly allocated
page-cache page (about 1.2 GB/s on a 2-vCPU machine, where the disk itself takes 1.35 GB/s), and
the kernel spends more CPU sending those pages to the disk later. With O_DIRECT the disk reads the
bytes straight from an aligned buffer in our memory and the CPU is free for the work that makes the
next bytes (width growth's random draws). The caller's bytes are staged into a ring of aligned
buffers; a thread writes each full buffer at its offset while the caller fills the next.

Where the filesystem refuses O_DIRECT (tmpfs on older kernels, some FUSE mounts), at open or at the
first write, the same writes go through the page cache. Durability is unchanged: O_DIRECT only
skips the cache, so the caller still fsyncs the file (its size and blocks are metadata) before the
rename that publishes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import queue
import threading

ALIGN = 4096  # offsets, lengths and buffer addresses of a direct write: the largest common block size
BUFFER_BYTES = 16 << 20
RING = 4  # buffers: the thread writes up to three while the caller fills the fourth
MEMORY_BYTES = RING * BUFFER_BYTES  # what a writer holds


class DirectWriter:
    """Appends to `fd` from offset 0; `close()` writes the rest, sets the file's size and returns it.

    An error of the writing thread (a full disk) is raised by the next `write`/`zeros` or by `close`.
    """

    def __init__(self, fd: int, path: os.PathLike[str] | str | None = None) -> None:
        """`path`: the file's name, for the errors of its writes."""
        self._fd = fd
        self._path = path
        self.direct = _set_direct(fd, True)
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(RING):
            self._free.put(mmap.mmap(-1, BUFFER_BYTES))  # page-aligned, so ALIGN-aligned
        self._full: queue.SimpleQueue[tuple[mmap.mmap, int, int] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._buffer: mmap.mmap | None = None
        self._fill = 0
        self._offset = 0  # file offset of the current buffer's first byte
        self._flushed = False
        self._thread = threading.Thread(target=self._drain, name="motif-direct-write", daemon=True)
        self._thread.start()

    def write(self, data: memoryview) -> None:
        data = memoryview(data).cast("B")
        while len(data):
            buffer = self._current()
            n = min(len(data), BUFFER_BYTES - self._fill)
            buffer[self._fill : self._fill + n] = data[:n]
            self._advance(n)
            data = data[n:]

    def zeros(self, nbytes: int) -> None:
        while nbytes:
            buffer = self._current()
            n = min(nbytes, BUFFER_BYTES - self._fill)
            buffer[self._fill : self._fill + n] = bytes(n)
            self._advance(n)
            nbytes -= n

    def flush(self) -> None:
        """Hand what is staged to the thread; nothing may be written after this."""
        self._flushed = True
        if self._fill:
            self._send(-(-self._fill // ALIGN) * ALIGN)  # a direct write's length is whole blocks
        self._full.put(None)

    def close(self) -> int:
        """Flush (if not done yet), wait for the thread, and cut the file to the bytes written:
        callable from another thread once `flush` has returned."""
        if not self._flushed:
            self.flush()
        size = self._offset
        self._thread.join()
        self._raise_error()
        os.ftruncate(self._fd, size)
        return size

    def abort(self) -> None:
        """Stop the thread after a failure; what it was writing is abandoned with the file."""
        with contextlib.suppress(BaseException):
            self._stop()

    # ---- the caller's side -----------------------------------------------------------------

    def _current(self) -> mmap.mmap:
        self._raise_error()
        if self._buffer is None:
            self._buffer = self._free.get()  # waits while the thread holds every other buffer
            self._raise_error()
        return self._buffer

    def _advance(self, n: int) -> None:
        self._fill += n
        if self._fill == BUFFER_BYTES:
            self._send(BUFFER_BYTES)

    def _send(self, length: int) -> None:
        assert self._buffer is not None
        if length > self._fill:  # the last block's padding: cut off again by close()
            self._buffer[self._fill : length] = bytes(length - self._fill)
        self._full.put((self._buffer, self._offset, length))
        self._offset += self._fill
        self._buffer, self._fill = None, 0

    def _stop(self) -> None:
        if not self._flushed:
            self._flushed = True
            self._full.put(None)
        self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # ---- the thread ------------------------------------------------------------------------

    def _drain(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, offset, length = item
            try:
                if self._error is None:
                    self._pwrite_all(memoryview(buffer)[:length], offset)
            except OSError as exc:  # handed to the caller, who raises it, naming the file
                self._error = OSError(exc.errno, exc.strerror, self._path) if self._path else exc
            except BaseException as exc:
                self._error = exc
            finally:
                self._free.put(buffer)  # a caller waiting for a buffer wakes and sees the error

    def _pwrite_all(self, data: memoryview, offset: int) -> None:
        while len(data):
            try:
                n = os.pwrite(self._fd, data, offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self.direct = _set_direct(self._fd, False)  # refused at write time: go through the cache
                continue
            data, offset = data[n:], offset + n


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for `fd`; whether it is on afterwards."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return on
