"""Property tests of the files motif reads besides stage files: whatever a config.json, a tokenizer
directory, a data file, a checksum record or a lease file holds, reading it either works or fails
with motif's own error (CheckpointError, DataError, LeaseError) in one line naming the file; never
another exception, never a traceback for the CLI to print.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from motif.config import DataSource
from motif.errors import CheckpointError, DataError
from motif.model import Llama, ModelArgs
from motif.model.checkpoint import open_checkpoint, read_args, save
from motif.storage import integrity
from motif.storage import lease as leases

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _paths(node, prefix=()):
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _mutate(doc, path, action, value):
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if action == "replace":
        parent[path[-1]] = value
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[f"{path[-1]}x"] = value
    return doc


def mutations(base):
    paths = [p for p, _ in _paths(base) if p]
    return st.lists(
        st.tuples(st.sampled_from(paths), st.sampled_from(["replace", "delete", "add"]), values), max_size=4
    )


def _apply(base, changes):
    doc = copy.deepcopy(base)
    for path, action, value in changes:
        try:
            doc = _mutate(doc, path, action, value)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


def _one_line(err: Exception, where: Path) -> None:
    message = str(err)
    assert "\n" not in message, message
    assert str(where) in message, message


# ---- config.json ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    args = ModelArgs(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},
    )  # fmt: skip
    model = Llama(args)
    model.init_weights(seed=0)
    path = tmp_path_factory.mktemp("fuzz") / "ck"
    save(model, path)
    config = json.loads((path / "config.json").read_text())
    config["motif_growth"] = {"mask": 0.5, "hidden": 8, "intermediate": None, "heads": 1, "kv_heads": 1}
    (path / "base.json").write_text(json.dumps(config))
    return path


@SETTINGS
@given(data=st.data())
def test_mutated_config_json_reads_or_fails_with_a_checkpoint_error(checkpoint, data):
    base = json.loads((checkpoint / "base.json").read_text())
    config = _apply(base, data.draw(mutations(base)))
    (checkpoint / "config.json").write_text(json.dumps(config))
    try:
        read_args(checkpoint)
        open_checkpoint(checkpoint)
    except CheckpointError as e:
        _one_line(e, checkpoint)


@settings(max_examples=150, deadline=None)
@given(values)
def test_any_config_mapping_builds_model_args_or_fails_with_a_checkpoint_error(config):
    if not isinstance(config, dict):
        config = {"hidden_size": config}
    try:
        ModelArgs.from_hf_config(config)
    except CheckpointError as e:
        assert "\n" not in str(e)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=200))
def test_config_json_bytes_read_or_fail_with_a_checkpoint_error(checkpoint, raw):
    (checkpoint / "config.json").write_bytes(raw)
    try:
        read_args(checkpoint)
    except CheckpointError as e:
        _one_line(e, checkpoint)


# ---- tokenizer files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tok"
    shutil.copytree(corpus / "data" / "tokenizer", path)
    return path


def _tokenizer_or_data_error(path: Path) -> None:
    from motif.data.tokenizer import Tokenizer

    try:
        tok = Tokenizer(path)
        tok.encode_batch(["안녕하세요 hello"])
    except DataError as e:
        _one_line(e, path)


@SETTINGS
@given(st.one_of(values, st.dictionaries(st.sampled_from(["bos_token", "eos_token", "x"]), values, max_size=3)))
def test_any_tokenizer_config_loads_or_fails_with_a_data_error(tokenizer_dir, config):
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(config))
    _tokenizer_or_data_error(tokenizer_dir)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_tokenizer_json_loads_or_fails_with_a_data_error(tokenizer_dir, corpus, data):
    (tokenizer_dir / "tokenizer_config.json").write_text('{"eos_token": "<|end_of_text|>"}')
    base = json.loads((corpus / "data" / "tokenizer" / "tokenizer.json").read_text())
    top = {k: v for k, v in base.items() if k != "model"}  # the vocabulary itself is too big to walk
    top["model"] = {k: v for k, v in base["model"].items() if k not in ("vocab", "merges")}
    changed = _apply(top, data.draw(mutations(top)))
    if isinstance(changed.get("model"), dict):
        changed["model"].update({k: base["model"][k] for k in ("vocab", "merges") if k not in changed["model"]})
    (tokenizer_dir / "tokenizer.json").write_text(json.dumps(changed))
    _tokenizer_or_data_error(tokenizer_dir)


# ---- data records --------------------------------------------------------------------------------

records = st.lists(
    st.one_of(
        st.dictionaries(st.sampled_from(["text", "body"]), values, max_size=2),
        st.fixed_dictionaries({"text": st.one_of(st.text(max_size=40), st.none(), scalars)}),
        values,
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=records, raw_tail=st.one_of(st.just(b""), st.binary(max_size=20)))
@example(rows=[{"\n": None}], raw_tail=b"")  # a field name with a newline once made the error two lines
def test_any_data_records_stream_or_fail_with_a_data_error(tmp_path_factory, corpus, monkeypatch, rows, raw_tail):
    import datasets

    from motif.data.sources import open_source
    from motif.data.stream import TokenStream
    from motif.data.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("records")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", root / "cache")
    path = root / "d.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + raw_tail)
    try:
        docs = open_source(DataSource(name="x", language="en", weight=1.0, path=str(path)), streaming=False)
        stream = TokenStream(docs, Tokenizer(corpus / "data" / "tokenizer"), seed=0, index=0)
        tokens = stream.take(64)
        assert tokens.dtype == np.int64 and len(tokens) == 64
    except DataError as e:
        assert "\n" not in str(e), str(e)
        assert "d.jsonl" in str(e) or "source 'x'" in str(e), str(e)


# ---- checksum records and lease files ------------------------------------------------------------


@SETTINGS
@given(st.one_of(values, st.fixed_dictionaries({"format": st.just("motif-checksums/1"), "files": values})))
def test_any_checksum_record_reads_or_fails_with_a_checkpoint_error(tmp_path_factory, record):
    directory = tmp_path_factory.mktemp("record")
    (directory / "model.safetensors").write_bytes(b"12345678")
    (directory / integrity.RECORD_NAME).write_text(json.dumps(record))
    try:
        files = integrity.read_record(directory)
    except CheckpointError as e:
        _one_line(e, directory)
        return
    problem = integrity.verify(directory, files or {})
    assert problem is None or "\n" not in problem


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(values, st.dictionaries(st.sampled_from(list(leases._FIELD_TYPES)), values)), st.booleans())
def test_any_lease_file_is_judged_without_an_exception(tmp_path_factory, monkeypatch, content, old):
    import os
    import time

    monkeypatch.setattr(leases, "_SETTLE_S", 0.0)
    directory = tmp_path_factory.mktemp("lease") / "dst"
    path = leases.lease_path(directory)
    path.write_text(json.dumps(content))
    if old:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    try:
        with leases.acquire(directory, "fuzz"):
            pass
    except leases.LeaseError as e:
        assert "\n" not in str(e)
