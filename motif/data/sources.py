"""Data sources: the documents of one `motif.data.sources[]` entry.

Local files (.jsonl/.json, .parquet, .txt; a file, a directory or a glob) and hub datasets are both
read with HF `datasets`. Local files become memory-mapped Arrow tables, so a source of any size
costs little RAM and supports random access: that is what lets each rank walk its own seeded
permutation of the documents and resume at an exact document index. Hub datasets with
`streaming: true` are iterated instead (see `StreamingDocuments`).
"""

from __future__ import annotations

import glob
from pathlib import Path

from motif.config import DataSource
from motif.errors import DataError

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


class Documents:
    """Random access to the texts of a map-style source."""

    def __init__(self, dataset, text_field: str, name: str):
        if text_field not in dataset.column_names:
            raise DataError(
                f"source {name!r}: no field {text_field!r} (fields: {', '.join(dataset.column_names)}); "
                "set text_field in motif.data.sources"
            )
        self._ds = dataset.select_columns([text_field])
        self._field = text_field
        self.name = name

    def __len__(self) -> int:
        return len(self._ds)

    def texts(self, indices: list[int]) -> list[str]:
        return [t or "" for t in self._ds[indices][self._field]]


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
                yield row.get(self._field) or ""


def open_source(src: DataSource, *, streaming: bool, rank: int = 0, world: int = 1, seed: int = 0):
    """Open one source: `Documents` (local files, or a hub dataset downloaded) or `StreamingDocuments`."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if src.path is not None:
            builder, files = local_files(src.path)
            if all(Path(f).stat().st_size == 0 for f in files):
                raise DataError(f"{src.path}: empty: no documents in source {src.name!r} (expected at least one)")
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
        raise DataError(f"source {src.name!r} ({where}): cannot load: {type(e).__name__}: {e}") from None
    if len(ds) == 0:
        raise DataError(f"{src.path or src.hub}: empty: no documents in source {src.name!r} (expected at least one)")
    return Documents(ds, src.text_field, src.name)


def _caused_by(err: BaseException | None, kind: type) -> bool:
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, kind):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


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
