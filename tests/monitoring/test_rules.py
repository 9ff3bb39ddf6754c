"""Alert rules: promtool accepts them, and every alert fires and stays quiet where its unit tests say."""

from __future__ import annotations

import re
import subprocess

import yaml

from monitoring import config, generate
from monitoring.rules import alerts


def _run(args: list[str], cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules(promtool):
    r = _run([promtool, "check", "rules", str(generate.RULES_FILE)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alerts.RECORDINGS) + len(alerts.ALERTS)} rules found" in r.stdout


def test_promtool_unit_tests_pass(promtool):
    r = _run([promtool, "test", "rules", generate.RULES_TEST.name], cwd=generate.RULES_TEST.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_unit_tests_catch_a_wrong_threshold(promtool, tmp_path):
    rules = generate.RULES_FILE.read_text().replace(f"(motif_mfu) < {config.THRESHOLDS.low_mfu}", "(motif_mfu) < 0.01")
    assert rules != generate.RULES_FILE.read_text()
    (tmp_path / generate.RULES_FILE.name).write_text(rules)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / generate.RULES_TEST.name).write_text(generate.RULES_TEST.read_text())
    r = _run([promtool, "test", "rules", generate.RULES_TEST.name], cwd=tmp_path / "tests")
    assert r.returncode != 0
    assert "MotifLowMFU: mfu 0.1" in r.stdout + r.stderr


def test_every_alert_is_complete():
    doc = yaml.safe_load(generate.RULES_FILE.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    assert {r["alert"] for r in rules} == {a.name for a in alerts.ALERTS}
    for r in rules:
        assert re.fullmatch(r"[0-9]+[mh]", r["for"]), r
        assert r["labels"]["severity"] in {"critical", "warning"}, r
        ann = r["annotations"]
        assert ann["summary"] and ann["description"], r["alert"]
        assert ann["runbook_url"] == f"{config.RUNBOOK_BASE}#{r['alert'].lower()}"


def test_every_alert_has_firing_and_quiet_cases():
    doc = yaml.safe_load(generate.RULES_TEST.read_text())
    for alert in alerts.ALERTS:
        tests = [t for t in doc["tests"] if t["alert_rule_test"][0]["alertname"] == alert.name]
        fires = [t for t in tests if t["alert_rule_test"][0]["exp_alerts"]]
        quiet = [t for t in tests if not t["alert_rule_test"][0]["exp_alerts"]]
        assert fires and quiet, f"{alert.name} needs a case that fires and one that does not"


def test_issue_alerts_are_present():
    wanted = {
        "MotifTrainingStalled",
        "MotifLossNotFinite",
        "MotifLossSpike",
        "MotifThroughputDrop",
        "MotifLowMFU",
        "MotifTrainerDown",
        "MotifTrainerAbsent",
        "MotifRanksMissing",
        "MotifRepeatedRestarts",
        "MotifGPUXidError",
        "MotifCheckpointTooOld",
        "MotifEnglishForgetting",
    }
    assert wanted <= {a.name for a in alerts.ALERTS}


def test_recording_rules_come_before_the_alerts_that_read_them():
    doc = yaml.safe_load(generate.RULES_FILE.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    records = [r["record"] for r in rules if "record" in r]
    assert records == [r.record for r in alerts.RECORDINGS]
    first_alert = next(i for i, r in enumerate(rules) if "alert" in r)
    assert all("record" in r for r in rules[:first_alert]) and len(records) == first_alert


def test_forgetting_is_measured_against_the_stage_start(promtool, tmp_path):
    """Negative control: with the recorded start replaced by the current value, the firing cases fail."""
    (rec,) = [r for r in alerts.RECORDINGS if r.record == config.HELDOUT_START_RECORD]
    text = generate.RULES_FILE.read_text()
    assert rec.expr in text
    current = "max by (namespace, job, language) (motif_heldout_bits_per_byte)"
    (tmp_path / generate.RULES_FILE.name).write_text(text.replace(rec.expr, current))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / generate.RULES_TEST.name).write_text(generate.RULES_TEST.read_text())
    r = _run([promtool, "test", "rules", generate.RULES_TEST.name], cwd=tmp_path / "tests")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "MotifEnglishForgetting: English bits per byte up 10%" in out
    assert "MotifEnglishForgetting: a restarted pod (new instance) is compared with the same start" in out
