"""The committed dashboards and rules are what the Python sources generate, and the dashboards are valid."""

from __future__ import annotations

import json

import jsonschema
import pytest

from monitoring import generate
from monitoring.promql import dashboard_queries


def test_committed_files_match_their_sources():
    stale = [str(p.relative_to(generate.ROOT.parent)) for p in generate.drifted()]
    assert not stale, f"generated files out of date, run `make dashboards`: {stale}"


def test_check_mode_reports_drift(tmp_path, monkeypatch, capsys):
    target = tmp_path / "training.json"
    target.write_text("{}\n")
    outputs = generate.outputs()
    make = outputs[generate.DASHBOARDS / "training.json"]
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    monkeypatch.setattr(generate, "outputs", lambda: {target: make})
    assert generate.main(["--check"]) == 1
    assert "training.json: out of date" in capsys.readouterr().err


def test_expected_files_are_generated(dashboards):
    assert set(dashboards) == {"training.json", "growth.json"}
    assert generate.RULES_FILE.exists() and generate.RULES_TEST.exists()
    assert generate.RULES_FILE.read_text().startswith("# Generated from monitoring/rules/alerts.py")


@pytest.mark.parametrize("name", ["training.json", "growth.json"])
def test_dashboard_validates_against_the_schema(dashboards, dashboard_schema, name):
    schema = dashboard_schema
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(dashboards[name]), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def test_the_schema_rejects_a_broken_dashboard(dashboards, dashboard_schema):
    schema = dashboard_schema
    broken = json.loads(json.dumps(dashboards["training.json"]))
    broken["panels"][1]["gridPos"] = {"h": 4}
    broken["__comment"] = "not allowed"
    assert len(list(jsonschema.Draft7Validator(schema).iter_errors(broken))) >= 2


@pytest.mark.parametrize("name", ["training.json", "growth.json"])
def test_dashboard_identity_ids_and_marker(dashboards, name):
    d = dashboards[name]
    assert d["uid"] in {"motif-training", "motif-growth"}
    assert "do not edit" in d["description"]
    ids = [p["id"] for p in d["panels"]]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
    assert [v["name"] for v in d["templating"]["list"]] == ["datasource", "namespace", "job", "stage"]


def test_panels_do_not_overlap(dashboards):
    for name, d in dashboards.items():
        cells = {}
        for p in d["panels"]:
            g = p["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: panel {p['id']} overlaps panel {cells[(x, y)]}"
                    cells[(x, y)] = p["id"]


def test_training_dashboard_covers_the_issue(dashboards):
    exprs = " ".join(e for _, _, e in dashboard_queries(dashboards["training.json"]))
    for needle in (
        "rate(motif_tokens_total",
        "by (language)",
        "motif_loss",
        "motif_learning_rate",
        "motif_grad_norm",
        "motif_mfu",
        "histogram_quantile(0.99, sum by (job, le) ((rate(motif_step_seconds_bucket",
        "motif_growth_mask",
        "motif_stage_info",
        "motif_checkpoint_seconds_bucket",
        "motif_last_checkpoint_timestamp_seconds",
        "motif_restarts_total",
        "kube_pod_container_status_restarts_total",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_XID_ERRORS",
    ):
        assert needle in exprs, needle


def test_growth_dashboard_covers_the_issue(dashboards):
    d = dashboards["growth.json"]
    titles = {p["title"] for p in d["panels"]}
    assert {"Loss by stage", "Loss at the start and end of each stage", "MSG mask ramp", "Tokens per stage"} <= titles
    assert {
        "Korean benchmarks per stage",
        "English benchmarks per stage",
        "Held-out bits per byte over training",
    } <= titles
    exprs = " ".join(e for _, _, e in dashboard_queries(d))
    for needle in ("motif_eval_score{", "kmmlu|haerae|kobest|click", 'task=~"mmlu', "motif_heldout_bits_per_byte{"):
        assert needle in exprs, needle
    assert "motif:heldout_bits_per_byte:stage_start" in exprs  # the rise the forgetting alert fires on
    assert d["annotations"]["list"][0]["expr"].startswith("max by (job, stage, growth)")
