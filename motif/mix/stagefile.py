"""Set the source weights of a stage file in place, changing nothing else in it.

A YAML round trip would drop the comments and reflow the file. Instead the file is composed (the
YAML node tree keeps each scalar's position in the text) and only the characters of each
`motif.data.sources[i].weight` value are replaced, so comments, layout, flow mappings and the
chart's keys stay byte for byte. The result is parsed back and must differ from the original in
the weights alone and be a valid stage before it is written (temporary file, then rename).
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
        nodes[name.value] = weight
    return nodes


def format_weight(w: float) -> str:
    return repr(round(w, 6))


def set_weights(text: str, weights: dict[str, float], where: str) -> str:
    """`text` with each named source's weight replaced; every other byte unchanged."""
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
    before, after = yaml.safe_load(old), yaml.safe_load(new)
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


def write_weights(path: Path, weights: dict[str, float]) -> tuple[str, str]:
    """Set the weights in the file at `path`; returns (old text, new text). Unchanged: no write."""
    try:
        old = path.read_text()
    except OSError as e:
        raise MotifError(f"{path}: cannot read stage file: {e.strerror or e}") from None
    new = set_weights(old, weights, str(path))
    if new != old:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(new)
            os.chmod(tmp, path.stat().st_mode & 0o7777)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise MotifError(f"{path}: cannot write stage file: {e.strerror or e}") from None
    return old, new
