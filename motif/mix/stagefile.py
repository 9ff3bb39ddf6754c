"""Set the source weights of a stage file in place, changing nothing else in it.

A YAML round trip would drop the comments and reflow the file. Instead the file is composed (the
YAML node tree keeps each scalar's position in the text) and only the characters of each
`motif.data.sources[i].weight` value are replaced, so comments, layout, flow mappings and the
chart's keys stay byte for byte. The result is parsed back and must differ from the original in
the weights alone and be a valid stage before it is written (temporary file, then rename).

Why the write is built this way:
- **The real file is edited.** A symbolic link is followed and the file it names is replaced (a
  rename over the link would leave the target unchanged while a diff is printed); a file with
  several hard links is rewritten in place, so every name sees the edit.
- **Bytes, not text.** The file is read and written as bytes (UTF-8 decoded without newline
  translation), so CRLF line endings and every byte but the weights' stay.
- **No lost edit.** The writer holds the stage file's lease (one `motif mix fit --write` at a
  time), and compares the file with what it read just before the rename: a change made by another
  process meanwhile is refused, the file left as that process wrote it.
- **Refused before any work**: a file that cannot be edited safely (a read-only volume, a weight
  that is a YAML alias of an anchor outside `motif.data.sources`) is refused in one line by
  `set_weights`, which the command calls before it fits.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml

from motif.config import ConfigError, parse_stage
from motif.errors import MotifError


def _child(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def weight_nodes(text: str, where: str) -> dict[str, yaml.ScalarNode]:
    """Source name -> the scalar node of its weight, in `text` (a stage file)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise MotifError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None
    sources = _child(_child(_child(root, "motif"), "data") if root else None, "sources")
    if not isinstance(sources, yaml.SequenceNode):
        raise MotifError(f"{where}: motif.data.sources: missing (expected a list of sources)")
    nodes: dict[str, yaml.ScalarNode] = {}
    for i, item in enumerate(sources.value):
        name, weight = _child(item, "name"), _child(item, "weight")
        if not isinstance(name, yaml.ScalarNode) or not isinstance(weight, yaml.ScalarNode):
            raise MotifError(f"{where}: motif.data.sources[{i}]: expected a mapping with name and weight")
        if any(weight is n for n in nodes.values()):
            raise MotifError(f"{where}: motif.data.sources[{i}].weight: a YAML alias; set the weights by hand")
        # An alias points at its anchor's node: its characters lie outside the sources, and editing
        # them would change another key (or drop the anchor every alias needs).
        if not item.start_mark.index <= weight.start_mark.index < item.end_mark.index:
            raise MotifError(
                f"{where}: motif.data.sources[{i}].weight: a YAML alias of an anchor outside motif.data.sources "
                f"(line {weight.start_mark.line + 1}); set the weights by hand"
            )
        nodes[name.value] = weight
    return nodes


def format_weight(w: float) -> str:
    return repr(round(w, 6))


def set_weights(text: str, weights: dict[str, float], where: str) -> str:
    """`text` with each named source's weight replaced; every other byte unchanged. `where`: the
    stage file's path; when it names a file, that file must be editable (checked before any work)."""
    if os.path.isfile(where):
        check_editable(Path(where))
    nodes = weight_nodes(text, where)
    unknown = sorted(set(weights) - set(nodes))
    if unknown:
        raise MotifError(f"{where}: motif.data.sources: no source named {unknown[0]} (have: {', '.join(nodes)})")
    missing = sorted(set(nodes) - set(weights))
    if missing:
        raise MotifError(f"{where}: motif.data.sources: no weight chosen for source {missing[0]}")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise MotifError(f"{where}: motif.data.sources: weights must sum to 1, got {total:g}")
    edits = sorted(((n.start_mark.index, n.end_mark.index, format_weight(weights[s])) for s, n in nodes.items()))
    out, pos = [], 0
    for start, end, value in edits:
        out += [text[pos:start], value]
        pos = end
    out.append(text[pos:])
    new = "".join(out)
    _check(text, new, weights, where)
    return new


def _check(old: str, new: str, weights: dict[str, float], where: str) -> None:
    """The edit changed the weights and nothing else, and the file is still a valid stage."""
    try:
        before, after = yaml.safe_load(old), yaml.safe_load(new)
    except yaml.YAMLError as e:  # an anchor the edit removed, say: never write what does not parse
        raise MotifError(
            f"{where}: setting the weights would break the file ({' '.join(str(e).split())}); set them by hand"
        ) from None
    for src in before["motif"]["data"]["sources"]:
        src["weight"] = weights[src["name"]]
    if before != after:
        raise MotifError(f"{where}: could not set the weights without changing other keys; set them by hand")
    try:
        parse_stage(after["motif"], source=where)
    except ConfigError as e:
        raise MotifError(str(e)) from None


def diff(old: str, new: str, path: str) -> str:
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), path, path)
    return "".join(lines)


def check_editable(path: Path) -> Path:
    """The real file behind `path` (links followed), refused in one line if it cannot be edited."""
    real = Path(os.path.realpath(path))
    where = f"{path} (-> {real})" if real != Path(os.path.abspath(path)) else str(path)
    directory = real.parent
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError as e:
        raise MotifError(f"{where}: cannot read stage file: {e.strerror or e}") from None
    if read_only:
        raise MotifError(f"{where}: on a read-only file system; not written (copy it elsewhere, then --write the copy)")
    # A hard-linked file is rewritten in place (its directory is not written); otherwise a temporary
    # file is created beside it and renamed over it.
    needs = real if real.stat().st_nlink > 1 else directory
    if not os.access(needs, os.W_OK):
        raise MotifError(f"{where}: cannot write {needs} (permission denied); not written")
    return real


def _read(path: Path) -> tuple[bytes, str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MotifError(f"{path}: cannot read stage file: {e.strerror or e}") from None
    try:
        return data, data.decode("utf-8")  # no newline translation: CRLF stays CRLF
    except UnicodeDecodeError as e:
        raise MotifError(f"{path}: not UTF-8 text (byte offset {e.start}); set the weights by hand") from None


def write_weights(path: Path, weights: dict[str, float]) -> tuple[str, str]:
    """Set the weights in the file at `path` (the real file behind a link); returns (old text, new
    text). Unchanged: no write. Another process's edit since the read is refused, never lost."""
    from motif.storage.lease import acquire

    real = check_editable(path)
    with acquire(real, f"motif mix fit --write {path}"):
        data, old = _read(real)
        new = set_weights(old, weights, str(path))
        if new != old:
            _replace(real, data, new.encode("utf-8"), path)
    return old, new


def _replace(real: Path, expected: bytes, new: bytes, shown: Path) -> None:
    """Write `new` to `real` if it still holds `expected`."""

    def unchanged() -> None:
        if real.read_bytes() != expected:
            raise MotifError(f"{shown}: changed by another process while the weights were set; not written (run again)")

    st = real.stat()
    try:
        if st.st_nlink > 1:  # every name of the file must see the edit: rewrite the inode itself
            with open(real, "r+b") as f:
                unchanged()
                f.write(new)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
            return
        tmp = real.with_name(f".{real.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "xb") as f:
                f.write(new)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, st.st_mode & 0o7777)
            unchanged()
            os.replace(tmp, real)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise MotifError(f"{shown}: cannot write stage file: {e.strerror or e}") from None
