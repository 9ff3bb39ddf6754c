"""`motif mix trial`, what each trial of the chart's Katib Experiment runs: the command the chart
renders parses as this command line, the proxy it builds, and the result line Katib's File
metrics collector reads."""

from __future__ import annotations

import datetime
import json

import yaml

from motif.cli import build_parser
from motif.mix.trial import result_line
from motif_dev.deploy import render

from .conftest import snapshot, tiny_stage, write_doc


def _trial_command() -> list[str]:
    values = tiny_stage()
    values["katib"] = {"enabled": True, "steps": 30}
    (exp,) = [o for o in render.objects(render.render(values, "motif-t-mix")) if o["kind"] == "Experiment"]
    master = exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["pytorchReplicaSpecs"]["Master"]
    return master["template"]["spec"]["containers"][0]["command"]


def test_the_charts_trial_command_is_this_command_line():
    command = _trial_command()
    assert command[:3] == ["motif-torchrun", "-m", "motif"]  # torchrun on every rank, then `motif ...`
    argv = [
        a.replace("${trialParameters.koShare}", "0.3").replace("${trialParameters.trialName}", "t-1") for a in command
    ]
    args = build_parser().parse_args(argv[3:])
    assert args.mix_command == "trial" and args.stage_file == "/etc/motif/stage.yaml"
    assert args.ko == "0.3" and args.steps == 30
    assert args.dir == "/workspace/ck/t-mix/katib/t-1"  # under motif.checkpoint.dir: writable with stageWritableOnly
    assert args.result == "/var/log/katib/motif-mix-result.json"


def test_the_result_line_is_katibs_json_format():
    line = result_line({"ko": 1.234567891, "en": 0.9}, 40)
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    # Katib's File collector in JSON format reads string values, one object per line.
    assert record["objective"] == record["heldout_bpb_ko"] == "1.234568" and record["heldout_bpb_en"] == "0.900000"
    assert all(isinstance(v, str) for v in record.values())
    assert datetime.datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%SZ")


def test_a_trial_builds_the_proxy_under_its_dir(tmp_path, motif_cli, monkeypatch):
    """Bad input first (nothing written), then the proxy stage file it would train."""
    monkeypatch.chdir(tmp_path)
    write_doc(tmp_path / "stage.yaml", tiny_stage())
    with_code = tiny_stage()
    with_code["motif"]["data"]["sources"][1]["weight"] = 0.4
    with_code["motif"]["data"]["sources"].append({"name": "code", "language": "code", "weight": 0.1, "path": "c"})
    write_doc(tmp_path / "code.yaml", with_code)
    for args, expected in (
        (["stage.yaml", "--ko", "1.5", "--steps", "30"], "--ko: share 1.5 is outside 0..1"),
        (["stage.yaml", "--ko", "0.3", "--steps", "0"], "--steps: expected > 0, got 0"),
        (["code.yaml", "--ko", "0.3", "--steps", "30"], "motif.eval.heldout: no held-out set in code"),
    ):
        before = snapshot(tmp_path)
        code, out, err = motif_cli("mix", "trial", *args, "--dir", str(tmp_path / "trial"))
        assert code == 2 and err.count("\n") == 1 and expected in err, err
        assert snapshot(tmp_path) == before
    from motif.config import load_stage
    from motif.mix import sweep as sw

    stage = load_stage(tmp_path / "stage.yaml")
    (proxy,) = sw.plan_grid(stage, [0.3], "stage.yaml")
    doc = sw.proxy_document(
        yaml.safe_load((tmp_path / "stage.yaml").read_text()),
        stage,
        proxy,
        steps=30,
        home="/workspace/ck/t-mix/katib/t-1",
        runner="trial",
        nproc=1,
        start=None,
        queue=None,
    )
    section = sw.validate_proxy(doc, "proxy.yaml")
    assert section.checkpoint.dir == "/workspace/ck/t-mix/katib/t-1" and section.output.startswith(
        section.checkpoint.dir
    )
    assert [s.weight for s in section.data.sources] == [0.3, 0.7] and section.train.max_steps == 30
    assert section.parallel.procs_per_node == 2  # a trial keeps the stage's layout (the chart's pods)
