"""Inputs that used to end in a traceback, now one line and exit 2 before the expensive work.

- Bytes that are not UTF-8 inside a JSON string of a data file: pyarrow's JSON reader keeps them,
  so the run failed at the first batch holding one (and again at every restart); now refused
  before training, naming the file and the line.
- A tokenizer whose pre-tokenizer regex backtracks without bound: the Rust tokenizer panicked in
  the middle of a run (hundreds of lines of backtrace under RUST_BACKTRACE=1); now refused when the
  tokenizer is loaded, before the model is built, in one line.
"""

from __future__ import annotations

import json
import shutil

from ..train.conftest import stage_section, write_stage
from .test_bad_inputs import _snapshot, check_error, run_cli


def test_invalid_utf8_inside_a_json_string_fails_before_training_naming_file_and_line(workdir):
    lines = (workdir / "data/en.jsonl").read_bytes().splitlines()
    lines[41] = b'{"text": "a document with \xff\xfe in it"}'
    (workdir / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    section = stage_section("utf", train={"max_steps": 4}, checkpoint={"every_steps": 1})
    section["data"]["sources"][1]["path"] = "bad.jsonl"
    stage = write_stage(workdir, section)
    before = _snapshot(workdir)
    code, stderr = run_cli(["train", stage.name, "--metrics-port", "0"], workdir)
    check_error(code, stderr, "train", ("bad.jsonl: line 42: not UTF-8 text (byte 0xff)",))
    assert _snapshot(workdir) == before
    assert not (workdir / "out").exists() and not list(workdir.glob("ck/utf/step_*"))


BACKTRACKING = {"type": "Split", "pattern": {"Regex": "(a|aa)*[^a]"}, "behavior": "Isolated", "invert": False}


def test_a_tokenizer_regex_that_makes_the_rust_tokenizer_panic_is_one_line_before_training(workdir, zygote):
    """The Rust tokenizer panics ("retry-limit-in-match over") on a run of `a`; under RUST_BACKTRACE=1
    its report was a backtrace of a hundred lines, then Python's traceback, in the middle of a run."""
    shutil.copytree(workdir / "data/tokenizer", workdir / "tok")
    spec = json.loads((workdir / "tok/tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [BACKTRACKING, spec["pre_tokenizer"]]}
    (workdir / "tok/tokenizer.json").write_text(json.dumps(spec))
    en = (workdir / "data/en.jsonl").read_bytes()
    (workdir / "en.jsonl").write_bytes(b'{"text": "' + b"a" * 200 + b'"}\n' + en)  # the first document
    section = stage_section("rx", train={"max_steps": 4}, checkpoint={"every_steps": 1})
    section["data"]["tokenizer"] = "tok"
    section["data"]["sources"][1]["path"] = "en.jsonl"
    stage = write_stage(workdir, section)
    before = _snapshot(workdir)
    child = zygote.spawn(
        ["train", stage.name, "--metrics-port", "0"], workdir, workdir.parent / "rx.log", env={"RUST_BACKTRACE": "1"}
    )
    code = child.wait(timeout=120)
    text = child.text()
    check_error(code, text, "train", ("tok/tokenizer.json: the tokenizer fails on plain text", "retry-limit"))
    assert "panicked" not in text and "RUST_BACKTRACE" not in text, text[-3000:]
    assert _snapshot(workdir) == before and not (workdir / "out").exists()
    assert not list(workdir.glob("ck/rx/step_*"))
