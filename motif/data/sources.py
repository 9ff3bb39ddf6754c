"""Data sources: the documents of one `motif.data.sources[]` entry.

Local files (.jsonl/.json, .parquet, .txt; a file, a directory or a glob) and hub datasets are both
read with HF `datasets`. Local files become memory-mapped Arrow tables, so a source of any size
costs little RAM and supports random access: that is what lets each rank walk its own seeded
permutation of the documents and resume at an exact document index. Hub datasets with
`streaming: true` are iterated instead (see `StreamingDocuments`).

A document longer than `LONG_TEXT_BYTES` is never turned into one Python string: `read` hands out
a `LongText`, whose pieces are cut straight from the memory-mapped Arrow buffer, so a single
multi-GB document costs a piece of RAM at a time (`motif.data.stream` tokenises it piece by piece).
The text field must hold strings: a column of numbers, objects or mixed JSON values is refused with
one line naming the source, the field and what it holds.
"""

from __future__ import annotations

import codecs
import glob
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motif.config import DataSource
from motif.errors import DataError

LONG_TEXT_BYTES = 256 << 10  # a document above this is read and tokenised in pieces
PIECE_BYTES = 64 << 10  # the size of those pieces (tokenizers needs ~140 bytes of RAM per byte)

# File suffix -> `datasets` builder.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def local_files(path: str) -> tuple[str, list[str]]:
    """The builder name and sorted file list of a local source path (file, directory or glob)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix in BUILDERS)
    elif any(c in path for c in "*?["):
        files = sorted(glob.glob(path, recursive=True))
    else:
        files = [path] if p.is_file() else []
    if not files:
        raise DataError(f"{path}: no data files (expected {', '.join(BUILDERS)} files, a directory or a glob)")
    kinds = {BUILDERS.get(Path(f).suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise DataError(f"{path}: mixed or unsupported file types; one of {', '.join(BUILDERS)} per source")
    return kinds.pop(), files


@dataclass
class LongText:
    """A document too long to hold as one string: UTF-8 bytes (a memory-mapped slice, or a str)."""

    data: memoryview | str
    nbytes: int

    def pieces(self, size: int = PIECE_BYTES) -> Iterator[str]:
        """The text in pieces of about `size` bytes, cut before a space where one is near, else at a
        character boundary, so tokenising the pieces gives (almost always) the whole text's tokens."""
        if isinstance(self.data, str):
            yield from _str_pieces(self.data, max(1, size // 4))
            return
        data, pos, end = self.data, 0, len(self.data)
        while pos < end:
            cut = min(end, pos + size)
            if cut < end:
                cut = _cut(data, pos, cut)
            yield bytes(data[pos:cut]).decode("utf-8")
            pos = cut


def _cut(data: memoryview, start: int, limit: int) -> int:
    """A cut point in (start, limit]: before a space that follows a non-space, else a UTF-8 boundary."""
    window = bytes(data[max(start + 1, limit - (limit - start) // 2) : limit + 1])
    at = window.rfind(b" ")
    while at > 0 and window[at - 1] in b" \t\r\n":
        at = window.rfind(b" ", 0, at)
    if at > 0:
        return limit - (len(window) - 1) + at
    cut = limit
    while cut > start + 1 and data[cut] & 0xC0 == 0x80:  # not inside a multi-byte character
        cut -= 1
    return cut


def _str_pieces(text: str, size: int) -> Iterator[str]:
    pos = 0
    while pos < len(text):
        cut = min(len(text), pos + size)
        if cut < len(text):
            space = text.rfind(" ", pos + max(1, (cut - pos) // 2), cut + 1)
            while space > pos and text[space - 1].isspace():
                space = text.rfind(" ", pos + 1, space)
            cut = space if space > pos else cut
        yield text[pos:cut]
        pos = cut


class Documents:
    """Random access to the texts of a map-style source."""

    def __init__(self, dataset, text_field: str, name: str, where: str | None = None):
        where = f"{where}: " if where else ""
        if text_field not in dataset.column_names:
            have = ", ".join(map(repr, dataset.column_names))  # quoted: a field name may hold a newline
            raise DataError(
                f"{where}source {name!r}: no field {text_field!r} (fields: {have}); "
                "set text_field in motif.data.sources"
            )
        kind = dataset.features[text_field]
        if getattr(kind, "dtype", None) not in ("string", "large_string"):
            raise DataError(
                f"{where}source {name!r}: field {text_field!r} holds {_describe(kind)}, expected text "
                "(a string in every record)"
            )
        self._ds = dataset.select_columns([text_field])
        self._field = text_field
        self.name = name
        self._column = None
        if len(self._ds) and not self._text_bytes():
            # Every sample would be end-of-text tokens: the source's weight would train nothing.
            raise DataError(
                f"{where}source {name!r}: every document is empty ({len(self._ds)} records, none with text in "
                f"field {text_field!r}; expected at least one non-empty document)"
            )

    def _text_bytes(self) -> int:
        """Bytes of text in the whole column (from the Arrow offsets: no text is read)."""
        chunks, _, offsets = self._chunks()
        return int(sum(int(o[-1]) - int(o[0]) for o in offsets if len(o)))

    def __len__(self) -> int:
        return len(self._ds)

    def texts(self, indices: list[int]) -> list[str]:
        return [t or "" for t in self._ds[indices][self._field]]

    def read(self, indices: list[int]) -> list[str | LongText]:
        """The documents at `indices`: strings, or a `LongText` for each very long one."""
        sizes = self._sizes(indices)
        if max(sizes, default=0) <= LONG_TEXT_BYTES:
            return self.texts(indices)
        return [
            self._long(i) if n > LONG_TEXT_BYTES else self.texts([i])[0] for i, n in zip(indices, sizes, strict=True)
        ]

    # Arrow access: document i is bytes offsets[i]..offsets[i+1] of its chunk's data buffer.

    def _chunks(self):
        """(chunks, first row of each chunk, each chunk's offsets as a numpy view), built once."""
        if self._column is None:
            table = self._ds.data.table if hasattr(self._ds.data, "table") else self._ds.data
            chunks = table.column(self._field).chunks
            starts = np.cumsum([0] + [len(c) for c in chunks])
            offsets = [_offsets(c) for c in chunks]
            self._column = (chunks, starts, offsets)
        return self._column

    def _rows(self, indices: list[int]) -> np.ndarray:
        """Table rows of dataset indices (a selection or shuffle maps them)."""
        idx = np.asarray(indices, dtype=np.int64)
        if self._ds._indices is not None:
            idx = self._ds._indices.column(0).take(idx).to_numpy().astype(np.int64)
        return idx

    def _locate(self, i: int):
        chunks, starts, offsets = self._chunks()
        row = int(self._rows([i])[0])
        c = int(np.searchsorted(starts, row, side="right")) - 1
        j = row - int(starts[c])
        return chunks[c], int(offsets[c][j]), int(offsets[c][j + 1])

    def _sizes(self, indices: list[int]) -> list[int]:
        # Vectorised: this runs for every batch of documents the data pipeline reads.
        chunks, starts, offsets = self._chunks()
        rows = self._rows(indices)
        which = np.searchsorted(starts, rows, side="right") - 1
        sizes = np.empty(len(rows), dtype=np.int64)
        for c in np.unique(which):
            mask = which == c
            j = rows[mask] - starts[c]
            sizes[mask] = offsets[c][j + 1] - offsets[c][j]
        return sizes.tolist()

    def _long(self, i: int) -> LongText:
        arr, start, end = self._locate(i)
        data = memoryview(arr.buffers()[2])[start:end]
        return LongText(data, end - start)


def _offsets(chunk) -> np.ndarray:
    """A string chunk's offsets, local row r spanning bytes [o[r], o[r + 1]) of its data buffer."""
    width = np.int64 if str(chunk.type) == "large_string" else np.int32
    if len(chunk) == 0 or chunk.buffers()[1] is None:
        return np.zeros(1, dtype=width)
    return np.frombuffer(chunk.buffers()[1], dtype=width)[chunk.offset : chunk.offset + len(chunk) + 1]


def _describe(kind) -> str:
    dtype = getattr(kind, "dtype", None)
    if dtype is not None:
        return f"{dtype} values"
    name = type(kind).__name__
    if name == "Json":
        return "JSON values of more than one type (strings mixed with numbers, lists or objects)"
    return f"{name} values ({kind})"


class StreamingDocuments:
    """Sequential access to a streamed hub dataset; this rank's shard via `split_dataset_by_node`.

    Resuming skips the documents already read (exact, but it re-reads them from the hub).
    """

    def __init__(self, dataset, text_field: str, name: str, rank: int, world: int, seed: int):
        from datasets.distributed import split_dataset_by_node

        self._ds = split_dataset_by_node(dataset.shuffle(seed=seed, buffer_size=10_000), rank=rank, world_size=world)
        self._field = text_field
        self.name = name

    def iterate(self, epoch: int, skip: int):
        self._ds.set_epoch(epoch)
        for i, row in enumerate(self._ds):
            if i >= skip:
                text = row.get(self._field)
                if text is not None and not isinstance(text, str):
                    raise DataError(
                        f"source {self.name!r}: record {i} of epoch {epoch}: field {self._field!r} is "
                        f"{type(text).__name__}, expected a string"
                    )
                yield text or ""


def open_source(src: DataSource, *, streaming: bool, rank: int = 0, world: int = 1, seed: int = 0):
    """Open one source: `Documents` (local files, or a hub dataset downloaded) or `StreamingDocuments`."""
    import datasets

    datasets.disable_progress_bars()
    # datasets logs its own multi-line report before raising; the one line below says it instead.
    datasets.utils.logging.set_verbosity(logging.CRITICAL + 1)
    try:
        if src.path is not None:
            builder, files = local_files(src.path)
            if all(Path(f).stat().st_size == 0 for f in files):
                raise DataError(f"{src.path}: empty: no documents in source {src.name!r} (expected at least one)")
            if builder == "json" and not _prepared(datasets, builder, files):
                _check_json_records(files)
            ds = datasets.load_dataset(builder, data_files=files, split="train")
        elif streaming:
            ds = datasets.load_dataset(src.hub, src.hub_config, split=src.split, streaming=True)
            return StreamingDocuments(ds, src.text_field, src.name, rank, world, seed)
        else:
            ds = datasets.load_dataset(src.hub, src.hub_config, split=src.split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ArrowInvalid...)
        where = src.path or src.hub
        if src.path is not None and _caused_by(e, UnicodeDecodeError):
            raise DataError(_not_utf8(files, src)) from None
        cause = _root_cause(e)
        raise DataError(
            f"source {src.name!r} ({where}): cannot load: {type(cause).__name__}: {_one_line(cause)}"
        ) from None
    if len(ds) == 0:
        raise DataError(f"{src.path or src.hub}: empty: no documents in source {src.name!r} (expected at least one)")
    return Documents(ds, src.text_field, src.name, src.path or src.hub)


def _caused_by(err: BaseException | None, kind: type) -> bool:
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, kind):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _prepared(datasets, builder: str, files: list[str]) -> bool:
    """Whether datasets already holds these files as Arrow (then their bytes are not read again)."""
    cache_dir = datasets.load_dataset_builder(builder, data_files=files).cache_dir
    return os.path.exists(os.path.join(cache_dir, "dataset_info.json"))


_NOT_AN_OBJECT = re.compile(rb"\n[ \t\r]*([^{\s])")  # a line whose first character is not `{`


def _check_json_records(files: list[str]) -> None:
    """Refuse a JSON lines record that is not an object before pyarrow reads it: its JSON reader
    kills the process (SIGSEGV) on a `null` first record; and bytes that are not UTF-8, which it
    keeps inside strings (a run would fail at the first batch holding one, and again at every
    restart). One pass in 16 MB chunks, before the one-time conversion to Arrow (which reads the
    bytes anyway)."""
    for name in files:
        with open(name, "rb") as f:
            head = f.read(16 << 20)
            if not name.endswith(".jsonl"):  # one JSON document: an object or a list of them
                rest = (head.removeprefix(b"\xef\xbb\xbf") + f.read(4096)).lstrip()
                if rest and rest[:1] not in b"{[":
                    raise DataError(f"{name}: not JSON records (expected an object or a list of objects)")
                _check_utf8(name)
                continue
            utf8 = codecs.getincrementaldecoder("utf-8")()
            at_line_start, line, chunk = True, 1, head.removeprefix(b"\xef\xbb\xbf")
            while chunk or (chunk := f.read(16 << 20)):
                _decode(utf8, chunk, name, line)
                text = (b"\n" if at_line_start else b"-") + chunk  # "-": the chunk starts inside a line
                bad = _NOT_AN_OBJECT.search(text)
                if bad is not None:
                    at = line + text.count(b"\n", 0, bad.start(1)) - (1 if at_line_start else 0)
                    got = text[bad.start(1) : bad.start(1) + 20].split(b"\n")[0].decode("utf-8", "replace")
                    raise DataError(f"{name}: line {at}: not a JSON object (a .jsonl record is {{...}}, got {got!r})")
                line += chunk.count(b"\n")
                tail = chunk[chunk.rfind(b"\n") + 1 :] if b"\n" in chunk else None
                at_line_start = (tail is not None and not tail.strip()) or (
                    tail is None and at_line_start and not chunk.strip()
                )
                chunk = b""
            _decode(utf8, b"", name, line, final=True)


def _decode(decoder, chunk: bytes, name: str, line: int, final: bool = False) -> None:
    """Feed `chunk` (starting at line `line` of `name`) to a UTF-8 decoder; refuse a byte that is not UTF-8."""
    try:
        decoder.decode(chunk, final)
    except UnicodeDecodeError as e:
        at = line + chunk.count(b"\n", 0, max(0, e.start - (len(e.object) - len(chunk))))
        raise DataError(
            f"{name}: line {at}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); data must be UTF-8"
        ) from None


def _check_utf8(name: str) -> None:
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with open(name, "rb") as f:
        while chunk := f.read(16 << 20):
            _decode(decoder, chunk, name, line)
            line += chunk.count(b"\n")
    _decode(decoder, b"", name, line, final=True)


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain (datasets wraps the parser's own error in a generic one)."""
    seen = 0
    while (err.__cause__ or err.__context__) is not None and seen < 20:
        err, seen = err.__cause__ or err.__context__, seen + 1
    return err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:500] or type(err).__name__


def _not_utf8(files: list[str], src: DataSource) -> str:
    """Which file is not UTF-8, and where (read again on this error path only)."""
    import codecs

    for name in files:
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        with open(name, "rb") as f:
            while chunk := f.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    at = f"byte 0x{chunk[e.start]:02x} at offset {offset + e.start}"
                    return f"{name}: not UTF-8 text ({at}); source {src.name!r} must be UTF-8"
                offset += len(chunk)
    return f"{src.path}: not UTF-8 text (source {src.name!r} must be UTF-8)"
