"""The stage-file loader: every committed stage file loads; bad keys are errors naming their path."""

from pathlib import Path

import pytest
import yaml

from motif.config import ConfigError, load_stage, parse_stage

ROOT = Path(__file__).resolve().parents[1]
STAGE_FILES = sorted((ROOT / "jobs").glob("*/*.yaml"))


def test_there_are_stage_files():
    assert {p.parent.name for p in STAGE_FILES} >= {"tiny", "llama3-motif-102b"}


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_stage_files_load(path):
    stage = load_stage(path)
    assert stage.name
    assert stage.source_file == str(path)


def _tiny_section():
    return yaml.safe_load((ROOT / "jobs/tiny/stage1-depth.yaml").read_text())["motif"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["growth"].update(layers="six"), "motif.growth.layers: expected an integer, got 'six'"),
        (lambda m: m["train"].update(max_stepz=3), "motif.train.max_stepz: unknown key"),
        (lambda m: m["train"].pop("max_steps"), "motif.train.max_steps: missing required key"),
        (lambda m: m["train"].update(max_steps=-1), "motif.train.max_steps: expected > 0, got -1"),
        (lambda m: m["data"]["sources"][0].update(weight=0.7), "weights must sum to 1, got 1.2"),
        (lambda m: m["train"].update(precision="fp8"), "motif.train.precision: expected one of 'fp32', 'bf16'"),
        (lambda m: m["parallel"].update(zero_stage=3), "needs motif.parallel.engine: deepspeed"),
        (
            lambda m: m.setdefault("metrics", {}).update(trainjob_status_every_s=0),
            "motif.metrics.trainjob_status_every_s: expected > 0, got 0",
        ),
    ],
)
def test_bad_values_name_their_key(edit, message):
    section = _tiny_section()
    edit(section)
    with pytest.raises(ConfigError, match=None) as err:
        parse_stage(section, source="stage.yaml")
    assert str(err.value).startswith("stage.yaml: ")
    assert message in str(err.value)


def test_missing_motif_key(tmp_path):
    p = tmp_path / "values.yaml"
    p.write_text("image: {tag: x}\n")
    with pytest.raises(ConfigError, match=r"values.yaml: motif: missing"):
        load_stage(p)
