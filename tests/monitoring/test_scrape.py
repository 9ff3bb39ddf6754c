"""A real Prometheus scrapes real `motif train` runs; every dashboard and rule expression is evaluated on it.

Two tiny stages run one after the other on CPU, each serving its exporter on its own port: stage 0
from scratch, then stage 1 growing it with MSG (so the growth panels have a growth event, a mask
ramp and a before/after loss). Then `motif eval --stage` evaluates each stage's output and pushes
its scores to a real Pushgateway. Prometheus (127.0.0.1, free port, temporary data directory, 0.1 s
scrapes, the motif rules loaded) scrapes both trainers and the Pushgateway. Afterwards every
dashboard query runs through the HTTP API the way Grafana runs it (range queries for graphs and
stats, instant queries for tables), with the template variables substituted: all must parse, and
every query that reads only motif series must return data. GPU (DCGM) and kube-state-metrics
queries only have to parse: there is neither here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from monitoring.local import Prometheus, Pushgateway, free_port
from monitoring.promql import dashboard_queries, substitute, variable_queries
from monitoring.rules import alerts
from motif.metrics import names

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
JOB = "motif-scrape"
STEPS = 120
EXTERNAL = ("DCGM_", "kube_")  # series from exporters that do not run here


def _section(name: str, **extra) -> dict:
    section = {
        "name": name,
        "output": f"out/{name}",
        "data": {
            "tokenizer": "data/tokenizer",
            "seq_len": 32,
            "sources": [
                {"name": "ko", "language": "ko", "weight": 0.5, "path": "data/ko.jsonl"},
                {"name": "en", "language": "en", "weight": 0.5, "path": "data/en.jsonl"},
            ],
        },
        "optim": {"lr": 3.0e-3, "min_lr": 3.0e-4, "warmup_steps": 5},
        "train": {"max_steps": STEPS, "micro_batch_size": 4, "precision": "fp32"},
        "parallel": {"engine": "ddp", "device": "cpu", "procs_per_node": 1, "collective_timeout_s": 60},
        "checkpoint": {"dir": f"ck/{name}", "every_steps": 20, "keep_last": 1},
        "eval": {
            "tasks": ["demo_kmmlu", "demo_kobest_copa", "demo_mmlu"],
            "include_path": "eval/tasks",
            "limit": 8,
            "every_steps": 40,
            "heldout": [
                {"name": "ko-heldout", "language": "ko", "path": "heldout/ko.jsonl"},
                {"name": "en-heldout", "language": "en", "path": "heldout/en.jsonl"},
            ],
        },
    }
    section.update(extra)
    return section


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from motif.data.corpus import documents, write_corpus
    from motif.data.tokenizer import train_bpe
    from motif.eval.demo import write_tasks

    wd = tmp_path_factory.mktemp("scrape")
    write_corpus(wd / "data", docs_per_language=200, seed=1)
    write_corpus(wd / "heldout", docs_per_language=10, seed=5)
    write_tasks(wd / "eval")
    train_bpe(documents("ko", 200, 1) + documents("en", 200, 1), 384, wd / "data" / "tokenizer")
    model = {
        "vocab_size": 384,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }
    growth = {"output": "ck/scrape-s1/grown", "hidden": 96, "intermediate": 192, "heads": 6, "ramp_steps": 40}
    stages = {
        "s0.yaml": _section("scrape-s0", model=model),
        "s1.yaml": _section("scrape-s1", input="out/scrape-s0", growth=growth),
    }
    for file, section in stages.items():
        (wd / file).write_text(yaml.safe_dump({"motif": section}, sort_keys=False))
    return wd


def _train(workdir: Path, stage_file: str, port: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # Linger long enough for two more scrapes, so the last step's values are stored.
    cmd = [sys.executable, "-m", "motif", "train", stage_file, "--max-steps", str(STEPS)]
    cmd += ["--metrics-port", str(port), "--linger-seconds", "2"]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=180)


def _eval(workdir: Path, stage_file: str, gateway: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "motif", "eval", "--stage", stage_file, "--device", "cpu", "--pushgateway", gateway]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def scraped(workdir, prometheus_bin):
    """Prometheus with both stages' runs and their pushed scores in its database; yields (prometheus, start, end)."""
    ports = [free_port(), free_port()]
    with Pushgateway() as gateway:
        targets = [f"127.0.0.1:{p}" for p in ports]
        prom = Prometheus(targets, job=JOB, interval="100ms", binary=prometheus_bin, pushgateway=gateway.address)
        with prom:
            start = time.time()
            for file, port in zip(("s0.yaml", "s1.yaml"), ports, strict=True):
                run = _train(workdir, file, port)
                assert run.returncode == 0, f"motif train {file} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
                assert f":{port}/metrics" in run.stdout + run.stderr, "the exporter did not serve on the given port"
            for file in ("s0.yaml", "s1.yaml"):  # what each stage's eval Job does once its output is complete
                run = _eval(workdir, file, gateway.url)
                assert run.returncode == 0, f"motif eval --stage {file} failed:\n{run.stderr[-3000:]}"
            time.sleep(1.0)
            end = time.time()
            assert prom.proc is not None and prom.proc.poll() is None, prom.logs()
            yield prom, start, end
        assert prom.proc is None and prom.dir is None, "Prometheus was not stopped"
    assert gateway.proc is None and gateway.dir is None, "the Pushgateway was not stopped"


def _heldout_records(workdir: Path, stage: str) -> list[dict]:
    """The held-out scores a training run logged (motif.eval.heldout: at the start, every every_steps, at the end)."""
    from motif.metrics.jsonl import read

    name = names.HELDOUT_BITS_PER_BYTE.name
    return [r for r in read(workdir / "ck" / stage / "metrics.jsonl") if name in r]


def _variables(start: float, end: float) -> dict[str, str]:
    return {
        "namespace": ".*",
        "job": ".*",
        "stage": ".*",
        "__rate_interval": "2s",
        "__interval": "100ms",
        "__range": f"{int(end - start) + 10}s",
    }


def _dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "monitoring/dashboards").glob("*.json"))}


def _panel_targets(d: dict):
    panels = list(d["panels"])
    while panels:
        p = panels.pop(0)
        panels.extend(p.get("panels", []))
        for t in p.get("targets", []):
            yield p, t


def test_both_runs_were_scraped(scraped):
    prom, start, end = scraped
    steps = prom.query_range("motif_step", start, end, "1s")
    assert {s["metric"]["instance"] for s in steps} == {t for t in prom.targets}
    # --linger-seconds keeps the exporter up after the run, so the final step is scraped.
    assert all(max(float(v) for _, v in s["values"]) == STEPS for s in steps), steps
    stages = {s["metric"]["stage"] for s in prom.query(f"last_over_time(motif_stage_info[{int(end - start) + 10}s])")}
    assert stages == {"scrape-s0", "scrape-s1"}


def test_every_dashboard_query_parses_and_motif_queries_return_data(scraped):
    prom, start, end = scraped
    values = _variables(start, end)
    empty, checked = [], 0
    for name, d in _dashboards().items():
        for panel, target in _panel_targets(d):
            expr = substitute(target["expr"], values)
            where = f"{name} panel {panel['id']} {panel['title']!r} {target['refId']}: {expr}"
            try:
                # Grafana runs table queries as instant queries, graphs and stats as range queries.
                instant = target.get("instant")
                result = prom.query(expr, at=end) if instant else prom.query_range(expr, start, end, "1s")
            except ValueError as e:
                pytest.fail(f"{where}\n  {e}")
            checked += 1
            if not any(x in target["expr"] for x in EXTERNAL) and not result:
                empty.append(where)
    assert checked == sum(len(dashboard_queries(d)) for d in _dashboards().values()) >= 40
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_heldout_scores_of_the_runs_are_scraped(scraped, workdir):
    prom, start, end = scraped
    window = f"{int(end - start) + 10}s"
    heldout = names.HELDOUT_BITS_PER_BYTE.name
    records = {stage: _heldout_records(workdir, stage) for stage in ("scrape-s0", "scrape-s1")}
    for stage, logged in records.items():
        assert [r["step"] for r in logged] == [0, 40, 80, STEPS], stage  # start, every 40 steps, end
        staged = f'{heldout} * on (instance) group_left (stage) motif_stage_info{{stage="{stage}"}}'
        found = prom.query(f"last_over_time(({staged})[{window}:100ms])", at=end)
        got = {s["metric"]["language"]: float(s["value"][1]) for s in found}
        assert got == pytest.approx(logged[-1][heldout], rel=1e-9), stage
    # Growth with MSG at m = 0 preserves the function: stage 1 starts where stage 0 ended.
    assert records["scrape-s1"][0][heldout] == pytest.approx(records["scrape-s0"][-1][heldout], rel=1e-5)
    # The recording rule kept the job's first score: what MotifEnglishForgetting compares with.
    latch = {s["metric"]["language"]: float(s["value"][1]) for s in prom.query(alerts.START, at=end)}
    assert latch == pytest.approx(records["scrape-s0"][0][heldout], rel=1e-9)


def test_pushed_scores_are_scraped_with_their_stage(scraped, workdir):
    prom, start, end = scraped
    found = prom.query(f"last_over_time({names.EVAL_SCORE.name}[{int(end - start) + 10}s])", at=end)
    got = {(s["metric"]["stage"], s["metric"]["task"], s["metric"]["metric"]): float(s["value"][1]) for s in found}
    for stage in ("scrape-s0", "scrape-s1"):
        summary = json.loads((workdir / "out" / stage / "eval" / "summary.json").read_text())
        assert summary["stage"] == stage and set(summary["heldout"]) == {"ko", "en"}
        for task, metrics in summary["tasks"].items():
            for metric, value in metrics.items():
                if not metric.endswith("_stderr"):
                    assert got[(stage, task, metric)] == pytest.approx(value), (stage, task, metric)


def test_annotations_and_variables_resolve(scraped):
    prom, start, end = scraped
    values = _variables(start, end)
    for name, d in _dashboards().items():
        for a in d["annotations"].get("list", []):
            result = prom.query_range(substitute(a["expr"], values), start, end, "1s")
            stages = {s["metric"]["stage"] for s in result}
            assert stages == {"scrape-s0", "scrape-s1"}, f"{name} annotation {a['name']}: {stages}"
        found = {}
        for var, match in variable_queries(d):
            label = {"namespace": "namespace", "job": "job", "stage": "stage"}[var]
            found[var] = set(
                prom.api(f"label/{label}/values", **{"match[]": substitute(match, values)}, start=str(start))
            )
        assert found == {"namespace": {"local"}, "job": {JOB}, "stage": {"scrape-s0", "scrape-s1"}}, name


def test_growth_panels_show_the_growth_event(scraped):
    prom, start, end = scraped
    window = f"{int(end - start) + 10}s"
    growth = {
        s["metric"]["when"]: float(s["value"][1])
        for s in prom.query(f"last_over_time(motif_growth_loss[{window}])", at=end)
    }
    assert set(growth) == {"before", "after"}
    # MSG starts with masks at 0: the grown model computes the same function on the same batch.
    assert growth["after"] == pytest.approx(growth["before"], rel=1e-4)
    mask = prom.query_range(
        'motif_growth_mask * on (instance) group_left (stage) motif_stage_info{stage="scrape-s1"}', start, end, "500ms"
    )
    ramp = [float(v) for _, v in mask[0]["values"]]
    assert min(ramp) < 1.0 and ramp[-1] == 1.0, ramp


def test_every_rule_expression_evaluates(scraped):
    prom, start, end = scraped
    for name, expr in [(a.name, a.expr) for a in alerts.ALERTS] + [(r.record, r.expr) for r in alerts.RECORDINGS]:
        try:
            prom.query(expr, at=end)
        except ValueError as e:
            pytest.fail(f"{name}: {expr}\n  {e}")
    groups = prom.api("rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {a.name for a in alerts.ALERTS} | {r.record for r in alerts.RECORDINGS}
    bad = {n: r.get("lastError") for n, r in loaded.items() if r["health"] != "ok"}
    assert not bad, bad
