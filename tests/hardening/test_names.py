"""A stage name is a Kubernetes name (an RFC 1123 label, as the chart's schema has it): a name with
`/`, `..`, an absolute path or anything else a directory or the API server would read otherwise is
refused when the stage file is read, by every command, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ..train.conftest import stage_section
from .test_bad_inputs import _snapshot, check_error, run_cli

NAMES = ["../escape", "a/b", "/tmp/abs", "..", ".", "Upper", "-dash", "under_score", "x" * 64, "a.b"]
COMMANDS = {
    "train": lambda stage: ["train", stage, "--metrics-port", "0"],
    "mix": lambda stage: ["mix", "sweep", stage, "--ko", "0.2,0.8", "--steps", "2", "--out", "sweep"],
    "plan": lambda stage: ["plan", "."],
    "grow": lambda stage: ["grow", "--stage", stage],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name", NAMES, ids=[repr(n)[:12] for n in NAMES])
def test_a_name_that_is_not_a_kubernetes_name_is_refused_before_anything_is_written(workdir, tmp_path, command, name):
    section = stage_section("ok")
    section["name"] = name
    stage = workdir / "stage.yaml"
    stage.write_text(yaml.safe_dump({"motif": section}, sort_keys=False))
    outside = {str(p) for p in Path(tmp_path.parent).iterdir()}
    before = _snapshot(workdir)
    argv = COMMANDS[command]("stage.yaml")
    code, stderr = run_cli(argv, workdir)
    check_error(code, stderr, argv[0], ("stage.yaml", "motif.name", "RFC 1123", repr(name)))
    assert _snapshot(workdir) == before
    assert {str(p) for p in Path(tmp_path.parent).iterdir()} == outside


def test_the_recipes_names_are_accepted():
    from motif.config import load_stage

    root = Path(__file__).resolve().parents[2]
    for path in sorted(root.glob("jobs/*/*.yaml")):
        assert load_stage(path).name
