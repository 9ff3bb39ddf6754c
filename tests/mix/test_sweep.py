"""`motif mix sweep`: the proxy stage files it writes, the Helm releases it would install (rendered,
linted and validated by real Helm, then `helm install --dry-run=client` through helm-python-sdk),
and every refusal (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest
import yaml

from motif.config import load_stage
from motif_dev.deploy import render

from .conftest import snapshot, tiny_stage, write_doc


def _sweep(motif_cli, *args):
    return motif_cli("mix", "sweep", *args)


def test_grid_proxies_are_the_stage_at_each_share_shortened(tmp_path, motif_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_doc(tmp_path / "stage.yaml", tiny_stage())
    code, out, err = _sweep(motif_cli, "stage.yaml", "--ko", "0.2,0.5,0.8", "--steps", "40", "--dry-run", "--out", "m")
    assert code == 0, err
    manifest = json.loads((tmp_path / "m" / "sweep.json").read_text())
    assert [p["name"] for p in manifest["proxies"]] == ["t-mix-mix-ko20", "t-mix-mix-ko50", "t-mix-mix-ko80"]
    assert manifest["steps"] == 40 and manifest["mode"] == "grid" and manifest["start_checkpoint"] is None
    for p, share in zip(manifest["proxies"], (0.2, 0.5, 0.8), strict=True):
        stage = load_stage(tmp_path / "m" / f"{p['name']}.yaml")  # a valid stage file
        assert [s.weight for s in stage.data.sources] == pytest.approx([share, 1 - share])
        assert stage.train.max_steps == 40 and stage.optim.warmup_steps == 4  # 20 of 200 steps -> 4 of 40
        assert stage.checkpoint.dir == f"m/{p['name']}" and stage.output == f"m/{p['name']}/final"
        assert stage.eval.every_steps == 10 and [h.language for h in stage.eval.heldout] == ["ko", "en"]
        assert stage.parallel.nodes == 1 and stage.parallel.procs_per_node == 1  # --local: one process each
    assert "not run: --dry-run" in out
    assert not (tmp_path / "m" / "t-mix-mix-ko20").exists()  # nothing trained


def test_repeats_train_each_share_with_other_data_seeds(tmp_path, motif_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_doc(tmp_path / "stage.yaml", tiny_stage())
    code, out, err = _sweep(motif_cli, "stage.yaml", "--ko", "0.2,0.5,0.8", "--repeats", "2", "--dry-run", "--out", "m")
    assert code == 0, err
    manifest = json.loads((tmp_path / "m" / "sweep.json").read_text())
    names = [p["name"] for p in manifest["proxies"]]
    assert names == [f"t-mix-mix-ko{s}-s{r}" for s in (20, 50, 80) for r in (1, 2)]
    assert [p["data_seed"] for p in manifest["proxies"]] == [0, 1] * 3
    for p in manifest["proxies"]:
        assert load_stage(tmp_path / "m" / f"{p['name']}.yaml").data.seed == p["data_seed"]
    assert "each share 2 times with other data seeds" in out
    assert "note: 3 mixtures; the fit of a law with 3 parameters is validated" in out  # 5 needed


def test_the_default_grid_has_enough_mixtures_to_validate_the_law(tmp_path, motif_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_doc(tmp_path / "stage.yaml", tiny_stage())
    code, out, err = _sweep(motif_cli, "stage.yaml", "--dry-run", "--json")
    assert code == 0, err
    assert len(json.loads(out)["proxies"]) == 5  # the law's 3 parameters + 2


def test_dirichlet_proxies_over_more_sources(tmp_path, motif_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = tiny_stage()
    doc["motif"]["data"]["sources"] = [
        {"name": "ko-wiki", "language": "ko", "weight": 0.4, "path": "data/ko.jsonl"},
        {"name": "ko-news", "language": "ko", "weight": 0.2, "path": "data/ko-news.jsonl"},
        {"name": "en-wiki", "language": "en", "weight": 0.4, "path": "data/en.jsonl"},
    ]
    (tmp_path / "data").mkdir()
    for name, size in (("ko", 6000), ("ko-news", 2000), ("en", 4000)):
        (tmp_path / "data" / f"{name}.jsonl").write_text("x" * size)
    write_doc(tmp_path / "stage.yaml", doc)
    code, out, err = _sweep(motif_cli, "stage.yaml", "--sources", "8", "--steps", "20", "--dry-run", "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["mode"] == "dirichlet" and len(manifest["proxies"]) == 8
    assert manifest["centre"] == pytest.approx([0.5, 1 / 6, 1 / 3]) and "sizes on disk" in manifest["centre_from"]
    for p in manifest["proxies"]:
        assert sum(p["weights"].values()) == pytest.approx(1.0, abs=1e-6) and min(p["weights"].values()) > 0
        stage = load_stage(tmp_path / "mix" / "t-mix" / f"{p['name']}.yaml")
        assert {s.name: s.weight for s in stage.data.sources} == p["weights"]
        assert p["ko_share"] == pytest.approx(p["weights"]["ko-wiki"] + p["weights"]["ko-news"], abs=1e-6)


def test_helm_releases_render_lint_validate_and_dry_run_install(tmp_path, motif_cli, monkeypatch):
    """One release per proxy, queued through Kueue: the PyTorchJob is created suspended with the
    queue label; no growth Job or shared monitoring objects; each release lints and validates."""
    monkeypatch.chdir(tmp_path)
    write_doc(tmp_path / "stage.yaml", tiny_stage())
    code, out, err = _sweep(
        motif_cli, "stage.yaml", "--ko", "0.1,0.5,0.9", "--steps", "20", "--helm", "--queue", "proxies", "--dry-run"
    )
    assert code == 0, err
    assert "3 releases checked (dry run)" in out
    sweep = tmp_path / "mix" / "t-mix"
    for tag in ("ko10", "ko50", "ko90"):
        values = render.load_values(sweep / f"t-mix-mix-{tag}.yaml")
        assert render.lint(values) == []
        objects = render.objects(render.render(values, f"motif-t-mix-mix-{tag}"))
        for obj in objects:
            render.validate(obj)
        written = list(yaml.safe_load_all((sweep / f"t-mix-mix-{tag}.manifest.yaml").read_text()))
        assert written == objects
        (job,) = [o for o in objects if o["kind"] == "PyTorchJob"]
        assert job["metadata"]["name"] == f"motif-t-mix-mix-{tag}"
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "proxies"
        assert job["spec"]["runPolicy"]["suspend"] is True  # Kueue admits it when quota frees up
        kinds = {o["kind"] for o in objects}
        assert "PrometheusRule" not in kinds and not any(o["metadata"]["name"].endswith("-grow") for o in objects)
        (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and "stage.yaml" in o.get("data", {})]
        trainer = yaml.safe_load(cm["data"]["stage.yaml"])["motif"]
        assert trainer["checkpoint"]["dir"] == f"mix/t-mix/t-mix-mix-{tag}" and trainer["train"]["max_steps"] == 20
    assert json.loads((sweep / "sweep.json").read_text())["proxies"][0]["status"] == "checked"


def _case(tmp_path, case):
    doc = tiny_stage()
    args = ["stage.yaml", "--ko", "0.1,0.5,0.9", "--steps", "10", "--dry-run"]
    expected = {
        "share-above-1": "--ko: share 1.2 is outside 0..1",
        "share-zero": "--ko: share 0 is outside 0..1",
        "two-shares": "--ko: 2 shares; the mixing law has 3 parameters per language, so a sweep needs at least 3",
        "weights-sum": "motif.data.sources: weights must sum to 1, got 1.2",
        "no-heldout": "motif.eval.heldout: needs held-out sources in ko and another language (have: none)",
        "no-korean": "motif.data.sources: no source with language: ko",
        "no-queue": "--helm: no Kueue LocalQueue (pass --queue NAME or set kueue.queueName in the stage file)",
        "steps": "--steps: expected > 0, got 0",
        "repeats": "--repeats: expected > 0, got 0",
        "repeats-sources": "--repeats: only with a --ko grid",
        "other-sweep": "holds another sweep",
    }[case]
    if case == "share-above-1":
        args[2] = "0.1,0.5,1.2"
    elif case == "share-zero":
        args[2] = "0,0.5,0.9"
    elif case == "two-shares":
        args[2] = "0.3,0.7"
    elif case == "weights-sum":
        doc["motif"]["data"]["sources"][1]["weight"] = 0.7
    elif case == "no-heldout":
        doc["motif"]["eval"] = {"tasks": ["kmmlu"]}
    elif case == "no-korean":
        doc["motif"]["data"]["sources"][0]["language"] = "ja"
        doc["motif"]["eval"]["heldout"][0]["language"] = "ko"
    elif case == "no-queue":
        args.append("--helm")
    elif case == "steps":
        args[4] = "0"
    elif case == "repeats":
        args += ["--repeats", "0"]
    elif case == "repeats-sources":
        args[1:3] = ["--sources", "4"]
        args += ["--repeats", "2"]
    write_doc(tmp_path / "stage.yaml", doc)
    return args, expected


@pytest.mark.parametrize(
    "case",
    [
        "share-above-1",
        "share-zero",
        "two-shares",
        "weights-sum",
        "no-heldout",
        "no-korean",
        "no-queue",
        "steps",
        "repeats",
        "repeats-sources",
        "other-sweep",
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, motif_cli, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    args, expected = _case(tmp_path, case)
    if case == "other-sweep":
        assert _sweep(motif_cli, *args)[0] == 0  # a first sweep; a different grid into the same dir is refused
        args[2] = "0.2,0.4,0.6"
    before = snapshot(tmp_path)
    code, out, err = _sweep(motif_cli, *args)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("motif mix: error: ") and expected in err, err
    assert out == "" and "Traceback" not in err
    assert snapshot(tmp_path) == before
