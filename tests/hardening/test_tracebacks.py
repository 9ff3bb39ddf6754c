"""Inputs that used to end in a traceback, now one line and exit 2 before the expensive work.

- Bytes that are not UTF-8 inside a JSON string of a data file: pyarrow's JSON reader keeps them,
  so the run failed at the first batch holding one (and again at every restart); now refused
  before training, naming the file and the line.
"""

from __future__ import annotations

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
