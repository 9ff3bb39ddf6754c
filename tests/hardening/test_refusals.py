"""Refusals of issue-10 classes: destinations that are not ours, busy or unwritable; overlapping stage
paths; out-of-range seeds and ports; malformed config.json values; checkpoints that fail their own
checksums or hold NaN; growths that cannot fit in memory or on disk; data and tokenizer files that
are not what a stage needs.

Every case goes through the real CLI (as in test_bad_inputs.py) and must end with exit status 2,
exactly one line `motif CMD: error: ...` naming the file or key and what was expected, no
traceback, and every file under the case directory (inputs, outputs, the data linked in)
byte-identical, with the same mtime, afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from ..train.conftest import stage_section
from . import test_bad_inputs as catalogue
from .test_bad_inputs import (
    _config,
    _snapshot,
    _stage,
    check_error,
    data_source,
    grow,
    grown_stage,
    key,
    run_cli,
    stage_with,
    with_file,
)

Setup = Callable[[Path], list[str]]
checkpoints, case_dir = catalogue.checkpoints, catalogue.case_dir  # the same fixtures


# ---- setups -----------------------------------------------------------------------------------


def prepared(change: Callable[[Path], None], then: Setup) -> Setup:
    def setup(d: Path) -> list[str]:
        change(d)
        return then(d)

    return setup


def _notes_dir(d: Path) -> None:
    (d / "notes").mkdir()
    (d / "notes" / "todo.txt").write_text("keep me\n")


def _training_root(d: Path) -> None:
    (d / "ckroot" / "step_00000004").mkdir(parents=True)
    (d / "ckroot" / "step_00000004" / "meta.json").write_text("{}\n")
    (d / "ckroot" / "metrics.jsonl").write_text("{}\n")


def _a_file(d: Path) -> None:
    (d / "report.txt").write_text("a file, not a directory\n")


def _link_to_here(d: Path) -> None:
    (d.parent / "link-to-case").symlink_to(d)


def _live_lease(d: Path) -> None:
    """A lease on grown/ held by a live process: this one (the lease module's own format)."""
    from motif.storage.lease import _boot_id, _start_ticks

    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": _start_ticks(os.getpid()),
        "boot": _boot_id(),
        "nonce": "n0",
        "what": "motif grow",
        "acquired": 0.0,
        "heartbeat": 1e12,  # far ahead: never stale by time either
        "stale_after": 60.0,
        "format": "motif-lease/1",
    }
    (d / ".grown.lease").write_text(json.dumps(holder))


def _edit_record(change: Callable[[dict], None], ck: str = "single") -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        path = d / ck / "checksums.json"
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))

    return edit


def _flip_a_byte(file: str, ck: str = "single") -> Callable[[Path], None]:
    def change(d: Path) -> None:
        path = sorted((d / ck).glob(file))[0]
        data = bytearray(path.read_bytes())
        data[-7] ^= 0x01  # inside the last tensor: the header still parses, the size is unchanged
        path.write_bytes(bytes(data))

    return change


def _nan_weights(keep_record: bool) -> Callable[[Path], None]:
    """A NaN in one weight, written by a tool other than motif (with a matching record, or none)."""

    def change(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        from motif.model.checkpoint import record_checksums

        ck = d / "single"
        tensors = load_file(str(ck / "model.safetensors"))
        tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
        save_file(tensors, str(ck / "model.safetensors"))
        (ck / "checksums.json").unlink()
        if keep_record:
            record_checksums(ck)

    return change


def _append_to(name: str, text: str, ck: str = "single") -> Callable[[Path], None]:
    def change(d: Path) -> None:
        with open(d / ck / name, "a") as f:
            f.write(text)

    return change


def _config_edit(**changes) -> Callable[[Path], None]:
    """A config.json value edited by hand (the checksum record is updated too, as a careless tool might)."""

    def change(d: Path) -> None:
        from motif.model.checkpoint import record_checksums

        _config(**changes)(d / "single")
        record_checksums(d / "single")

    return change


def _rope_llama3(**factor) -> Callable[[Path], None]:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    scaling.update(original_max_position_embeddings=8192, **factor)
    return _config_edit(rope_scaling=scaling, rope_parameters=None)


def _growth_of(value) -> Callable[[Path], None]:
    return _config_edit(model_type="motif_growing_llama", motif_growth=value)


def grown_into(output: str, *args: str) -> Setup:
    """`motif grow --stage` of a stage that grows `single/` into `output`."""

    def setup(d: Path) -> list[str]:
        section = stage_section("bad", model=None, input="single", growth={"output": output, "layers": 4})
        return ["grow", "--stage", _stage(d, section), *args]

    return setup


def grow_single(*args: str, dst: str = "grown") -> Setup:
    return lambda d: ["grow", "single", dst, "--layers", "4", *args]


def tokenizer_copy(change: Callable[[Path], None]) -> Setup:
    """A stage whose tokenizer is a changed copy of the corpus tokenizer."""

    def setup(d: Path) -> list[str]:
        shutil.copytree(d / "data" / "tokenizer", d / "tok")
        change(d / "tok")
        section = stage_section("bad")
        section["data"]["tokenizer"] = "tok"
        return ["train", _stage(d, section), "--metrics-port", "0"]

    return setup


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda tok: (tok / name).write_text(text)


def _records(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def stage_paths(**paths) -> Setup:
    """A stage over `single/` with the given output / input / checkpoint.dir / growth.output."""

    def setup(d: Path) -> list[str]:
        section = stage_section("bad", model=None, input="single")
        growth = paths.pop("growth_output", None)
        if growth is not None:
            section["growth"] = {"output": growth, "layers": 4}
        for name, value in paths.items():
            if name == "checkpoint_dir":
                section["checkpoint"]["dir"] = value
            else:
                section[name] = value
        return ["train", _stage(d, section), "--metrics-port", "0"]

    return setup


# (id, setup -> argv, fragments the one error line must hold)
CATALOGUE: list[tuple[str, Setup, tuple[str, ...]]] = [
    # -- destinations that are not ours (issue 10, section 1)
    ("dst-parent-of-the-source", grow_single("--overwrite", dst="."), (".: contains the source single", "never")),
    ("dst-the-source-itself", grow_single("--overwrite", dst="single"), ("single: is the source",)),
    (
        "dst-link-to-the-source-parent",
        prepared(_link_to_here, grow_single("--overwrite", dst="../link-to-case")),
        ("../link-to-case: contains the source single",),
    ),
    (
        "dst-not-a-checkpoint",
        prepared(_notes_dir, grow_single("--overwrite", dst="notes")),
        ("notes: exists and is not a checkpoint directory (no config.json)", "only a checkpoint directory"),
    ),
    (
        "dst-a-training-checkpoint-root",
        prepared(_training_root, grow_single("--overwrite", dst="ckroot")),
        ("ckroot", "not a checkpoint directory"),
    ),
    ("dst-a-file", prepared(_a_file, grow_single("--overwrite", dst="report.txt")), ("report.txt", "not a directory")),
    (
        "dst-stage-output-not-a-checkpoint",
        prepared(_notes_dir, grown_into("notes", "--overwrite")),
        ("notes: exists and is not a checkpoint directory", "only a checkpoint directory is replaced"),
    ),
    # -- one writer per destination (section 2)
    (
        "dst-busy",
        prepared(_live_lease, grow_single()),
        ("grown: in use by motif grow (host", f"pid {os.getpid()}", "one writer per directory"),
    ),
    # -- overlapping stage paths, by key (section 1)
    (
        "paths-output-is-checkpoint-dir",
        stage_paths(output="ck/bad", checkpoint_dir="ck/bad"),
        ("stage.yaml", "motif.output: ck/bad is also motif.checkpoint.dir"),
    ),
    ("paths-output-is-input", stage_paths(output="single"), ("motif.output: single is also motif.input",)),
    (
        "paths-output-contains-checkpoint-dir",
        stage_paths(output="out", checkpoint_dir="out/ck"),
        ("motif.output: out contains motif.checkpoint.dir (out/ck)", "replaces it whole"),
    ),
    (
        "paths-growth-output-is-input",
        stage_paths(growth_output="./single"),
        ("motif.input: single is also motif.growth.output",),
    ),
    (
        "paths-growth-output-contains-input",
        stage_paths(growth_output="."),
        ("motif.growth.output: . contains motif.", "the final write replaces it whole"),
    ),
    (
        "paths-output-inside-input",
        stage_paths(output="single/final"),
        ("motif.output: single/final is inside motif.input (single)", "nothing is written inside"),
    ),
    (
        "paths-input-inside-checkpoint-dir",
        stage_paths(checkpoint_dir="."),
        ("motif.input: single is inside motif.checkpoint.dir",),
    ),
    (
        "paths-output-named-like-a-checkpoint",
        stage_paths(output="ck/bad/step_00000008"),
        ("motif.output: ck/bad/step_00000008 is named like a training checkpoint",),
    ),
    # -- out-of-range seeds and ports (section 6)
    ("seed-negative", stage_with(key("train.seed", -1)), ("motif.train.seed", "0 <= seed < 2**32", "-1")),
    ("seed-too-large", stage_with(key("data.seed", 2**32)), ("motif.data.seed", "2**32", str(2**32))),
    (
        "seed-of-growth-too-large",
        grown_stage("grow", layers=4, seed=2**40),
        ("stage.yaml", "motif.growth.seed", "0 <= seed < 2**32"),
    ),
    ("seed-of-grow-negative", grow_single("--seed", "-3"), ("seed", "0 <= seed < 2**32", "-3")),
    ("port-zero", stage_with(lambda s: None, metrics={"port": 0}), ("motif.metrics.port", "1-65535", "0")),
    ("port-too-large", stage_with(lambda s: None, metrics={"port": 65536}), ("motif.metrics.port", "1-65535", "65536")),
    (
        "max-skipped-steps-negative",
        stage_with(key("train.max_skipped_steps", -1)),
        ("motif.train.max_skipped_steps", ">= 0", "-1"),
    ),
    # -- malformed config.json values (section 6)
    ("config-size-as-string", prepared(_config_edit(hidden_size="64"), grow_single()), ("config.json", "hidden_size")),
    (
        "config-layers-as-float",
        prepared(_config_edit(num_hidden_layers=2.0), grow_single()),
        ("config.json", "num_hidden_layers: expected a positive integer", "2.0"),
    ),
    (
        "config-kv-heads-zero",
        prepared(_config_edit(num_key_value_heads=0), grow_single()),
        ("config.json", "num_key_value_heads: expected a positive integer", "0"),
    ),
    (
        "config-rope-theta-as-word",
        prepared(_config_edit(rope_theta="fast", rope_parameters=None), grow_single()),
        ("config.json", "rope_theta: expected a finite number", "'fast'"),
    ),
    (
        "config-eps-negative",
        prepared(_config_edit(rms_norm_eps=-1e-5), grow_single()),
        ("config.json", "rms_norm_eps: expected a number > 0"),
    ),
    (
        "config-tied-as-string",
        prepared(_config_edit(tie_word_embeddings="false"), grow_single()),
        ("config.json", "tie_word_embeddings: expected true or false", "'false'"),
    ),
    (
        "config-rope-scaling-a-list",
        prepared(_config_edit(rope_scaling=[1, 2], rope_parameters=None), grow_single()),
        ("config.json", "rope_scaling: expected a mapping or null"),
    ),
    (
        "config-rope-parameters-a-string",
        prepared(_config_edit(rope_parameters="default"), grow_single()),
        ("config.json", "rope_parameters: expected a mapping"),
    ),
    (
        "config-rope-factor-a-word",
        prepared(_rope_llama3(factor="eight"), grow_single()),
        ("config.json", "rope_scaling.factor: expected a finite number"),
    ),
    (
        "config-dtype-a-number",
        prepared(_config_edit(torch_dtype=16, dtype=None), grow_single()),
        ("config.json", "torch_dtype: expected one of"),
    ),
    (
        "config-positions-a-boolean",
        prepared(_config_edit(max_position_embeddings=True), grow_single()),
        ("config.json", "max_position_embeddings: expected a positive integer", "True"),
    ),
    (
        "config-growth-not-a-mapping",
        prepared(_growth_of(5), grow_single()),
        ("config.json", "motif_growth: expected a mapping", "5"),
    ),
    (
        "config-growth-mask-a-word",
        prepared(_growth_of({"mask": "half"}), grow_single()),
        ("config.json", "motif_growth.mask: expected a finite number", "'half'"),
    ),
    (
        "config-growth-heads-without-kv-heads",
        prepared(_growth_of({"mask": 0.0, "heads": 2}), grow_single()),
        ("config.json", "motif_growth.kv_heads: missing (expected whenever heads is given)"),
    ),
    # -- checkpoints that prove themselves (section 4)
    (
        "ckpt-bit-flip",
        prepared(_flip_a_byte("model.safetensors"), grow_single()),
        ("single/model.safetensors: checksum mismatch",),
    ),
    (
        "ckpt-bit-flip-in-a-shard",
        prepared(_flip_a_byte("model-00002-*.safetensors", "sharded"), grow("--layers", "4", src="sharded", dst="g")),
        ("sharded/model-00002-of-", "checksum mismatch"),
    ),
    (
        "ckpt-record-not-json",
        prepared(lambda d: (d / "single" / "checksums.json").write_text("{oops"), grow_single()),
        ("single/checksums.json: unreadable or not JSON",),
    ),
    (
        "ckpt-record-no-files-key",
        prepared(_edit_record(lambda doc: doc.pop("files")), grow_single()),
        ("single/checksums.json: format", "files mapping"),
    ),
    (
        "ckpt-record-entry-without-checksum",
        prepared(_edit_record(lambda doc: doc["files"]["config.json"].pop("checksum")), grow_single()),
        ("single/checksums.json: files.config.json: checksum: expected a string",),
    ),
    (
        "ckpt-recorded-file-missing",
        prepared(
            _edit_record(lambda doc: doc["files"].update({"tokenizer.json": {"size": 10, "checksum": "xxh3_128:0"}})),
            grow_single(),
        ),
        ("single/tokenizer.json: missing (the checksum record lists it)",),
    ),
    (
        "ckpt-recorded-file-resized",
        prepared(_append_to("config.json", "\n\n"), grow_single()),
        ("single/config.json", "bytes, the checksum record says"),
    ),
    (
        "ckpt-nan-weights-recorded",
        prepared(_nan_weights(keep_record=True), grow_single()),
        ("single/model.safetensors: tensor model.layers.1.mlp.up_proj.weight holds non-finite values",),
    ),
    (
        "ckpt-nan-weights-unrecorded",
        prepared(_nan_weights(keep_record=False), grow_single()),
        ("tensor model.layers.1.mlp.up_proj.weight holds non-finite values (NaN or inf)",),
    ),
    # -- preflight: memory (section 6)
    (
        "grow-cannot-fit-in-memory",
        lambda d: ["grow", "single", "grown", "--intermediate", str(2**36)],
        ("tensor model.layers.0.mlp.gate_proj.weight", "of memory", "available; refused before starting"),
    ),
    # -- data and tokenizer files (section 6)
    (
        "data-text-field-numbers",
        with_file("n.jsonl", _records({"text": 1}, {"text": 2}), data_source(path="n.jsonl")),
        ("n.jsonl", "source 'x'", "field 'text' holds int64 values", "expected text"),
    ),
    (
        "data-text-field-mixed",
        with_file("m.jsonl", _records({"text": "a"}, {"text": 5}), data_source(path="m.jsonl")),
        ("m.jsonl", "field 'text' holds JSON values of more than one type"),
    ),
    (
        "data-text-field-objects",
        with_file("o.jsonl", _records({"text": {"a": 1}}, {"text": {"a": 2}}), data_source(path="o.jsonl")),
        ("o.jsonl", "field 'text' holds", "expected text"),
    ),
    (
        "data-text-field-lists",
        with_file("l.jsonl", _records({"text": ["a"]}, {"text": ["b"]}), data_source(path="l.jsonl")),
        ("l.jsonl", "field 'text' holds", "expected text"),
    ),
    (
        "data-record-not-an-object",
        with_file("r.jsonl", b'{"text": "a"}\n[1, 2]\n', data_source(path="r.jsonl")),
        ("r.jsonl: line 2: not a JSON object", "[1, 2]"),
    ),
    (  # pyarrow's JSON reader kills the process (SIGSEGV) on this one: refused before it reads it
        "data-record-null",
        with_file("z.jsonl", b"null\n", data_source(path="z.jsonl")),
        ("z.jsonl: line 1: not a JSON object", "'null'"),
    ),
    (
        "data-not-json-lines",
        with_file("t.jsonl", b'{"text": "a"}\n{"text": \n', data_source(path="t.jsonl")),
        ("source 'x' (t.jsonl): cannot load",),
    ),
    (
        "tokenizer-config-not-json",
        tokenizer_copy(_write("tokenizer_config.json", "{bos_token: <s>")),
        ("tok/tokenizer_config.json: not valid JSON",),
    ),
    (
        "tokenizer-config-a-list",
        tokenizer_copy(_write("tokenizer_config.json", "[]")),
        ("tok/tokenizer_config.json: expected a JSON object, got list",),
    ),
    (
        "tokenizer-config-eos-a-number",
        tokenizer_copy(_write("tokenizer_config.json", '{"eos_token": 7}')),
        ("tok/tokenizer_config.json: eos_token: expected a token string", "7"),
    ),
    (
        "tokenizer-config-eos-unknown",
        tokenizer_copy(_write("tokenizer_config.json", '{"eos_token": "<|nope|>"}')),
        ("tok/tokenizer_config.json: eos_token: '<|nope|>' is not in the vocabulary",),
    ),
    (
        "tokenizer-config-bos-content-a-list",
        tokenizer_copy(_write("tokenizer_config.json", '{"bos_token": {"content": ["<s>"]}}')),
        ("tok/tokenizer_config.json: bos_token: expected a token string",),
    ),
    (
        "tokenizer-json-garbage",
        tokenizer_copy(_write("tokenizer.json", '{"version": "1.0", "model": 5}')),
        ("tok/tokenizer.json: cannot read tokenizer",),
    ),
]


def test_the_catalogue_covers_every_class():
    assert len({c[0] for c in CATALOGUE}) == len(CATALOGUE)
    classes = {c[0].split("-")[0] for c in CATALOGUE}
    assert classes >= {"dst", "paths", "seed", "port", "config", "ckpt", "grow", "data", "tokenizer"}


@pytest.mark.parametrize(("setup", "fragments"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_refused_with_one_clear_line_and_nothing_changed(case_dir, setup, fragments):
    argv = setup(case_dir)
    before = _snapshot(case_dir)
    code, stderr = run_cli(argv, case_dir)
    print(check_error(code, stderr, argv[0], fragments))
    assert _snapshot(case_dir) == before
    assert not list(case_dir.glob(".*.partial-*")), "a partial write was left behind"
