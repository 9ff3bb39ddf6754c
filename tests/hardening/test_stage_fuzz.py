"""Property tests: whatever a stage file holds, the loader either accepts it or raises ConfigError."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from motif.config import ConfigError, StageConfig, load_stage, parse_stage

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "jobs/tiny/stage2-width.yaml").read_text())["motif"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def _paths(node, prefix=()):
    """Every (path, value) pair in a nested mapping/list."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


PATHS = [p for p, _ in _paths(BASE) if p]


def _mutate(doc, path, action, value):
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[f"{last}_extra"] = value
    return doc


def _assert_clean(section):
    try:
        stage = parse_stage(section, source="fuzz.yaml")
    except ConfigError as e:
        message = str(e)
        assert message.startswith("fuzz.yaml: motif"), message
        assert "\n" not in message.strip() or "YAML" in message
    else:
        assert isinstance(stage, StageConfig)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(PATHS), st.sampled_from(["replace", "delete", "add"]), values),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_stage_files_fail_only_with_config_errors(mutations):
    doc = copy.deepcopy(BASE)
    for path, action, value in mutations:
        try:
            doc = _mutate(doc, path, action, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    _assert_clean(doc)


@settings(max_examples=200, deadline=None)
@given(values)
def test_arbitrary_sections_fail_only_with_config_errors(section):
    _assert_clean(section)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_file_text_fails_only_with_config_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "stage.yaml"
    path.write_text(text)
    try:
        load_stage(path)
    except ConfigError as e:
        assert str(e).startswith(str(path))


# ---- overlapping paths -------------------------------------------------------------------------

PATH_KEYS = ("output", "input", "checkpoint.dir", "growth.output")
# Names that overlap in every way (equal, nested, through `.` and `..`), and the chart's layout
# (outputs inside checkpoint.dir); about one draw in ten is a valid stage.
PATHS_TRIED = ["in", "out", "ck", "grown", "ck/final", "ck/grown", "ck/step_00000001", "out/ck", "in/out", "."]
path_values = st.sampled_from([*PATHS_TRIED, "./in", "in/../out"])


def _path_of(section: dict, key: str) -> str | None:
    node = section
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({k: path_values for k in PATH_KEYS}))
def test_accepted_stage_paths_never_overlap_a_replaced_directory(paths):
    import os

    doc = copy.deepcopy(BASE)
    doc["input"], doc["output"] = paths["input"], paths["output"]
    doc["checkpoint"]["dir"], doc["growth"]["output"] = paths["checkpoint.dir"], paths["growth.output"]
    doc.pop("model", None)
    try:
        parse_stage(doc, source="fuzz.yaml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml: motif."), str(e)
        return
    real = {k: Path(os.path.realpath(_path_of(doc, k))) for k in PATH_KEYS}
    assert len(set(real.values())) == len(real), real
    for replaced in ("output", "growth.output"):
        for other in PATH_KEYS:
            assert real[replaced] not in real[other].parents, (replaced, other, real)
    for other in PATH_KEYS:
        assert real["input"] not in real[other].parents, ("input", other, real)
    assert real["checkpoint.dir"] not in real["input"].parents
