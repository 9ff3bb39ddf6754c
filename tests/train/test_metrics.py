"""The metrics layer: names from motif.metrics.names, a real HTTP scrape of the exporter, JSONL."""

import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from motif.metrics import names
from motif.metrics.jsonl import JsonlBackend, read
from motif.metrics.logger import MetricLogger
from motif.metrics.prometheus import PrometheusBackend


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a real HTTP GET of the exporter."""
    port = urllib.parse.urlsplit(url).port  # the URL names this host; scrape it on the loopback
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    samples = {}
    for family in text_string_to_metric_families(text.read().decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_exporter_serves_the_logged_values(tmp_path):
    prom = PrometheusBackend()
    url = prom.serve(0, addr="127.0.0.1")
    assert prom.port and url.endswith(f":{prom.port}/metrics")
    logger = MetricLogger([prom, JsonlBackend(tmp_path / "m.jsonl", static={"stage": "s1"})])
    try:
        prom.info({"stage": "s1", "growth": "msg", "params": "123", "world_size": "2", "engine": "ddp"})
        logger.log({names.STEP.name: 1, names.TOKENS.name: {"ko": 100, "en": 50}, names.LOSS.name: {"ko": 2.5}}, 1)
        logger.log(
            {
                names.STEP.name: 2,
                names.TOKENS.name: {"ko": 180, "en": 130},
                names.LOSS.name: {"ko": 2.25, "en": 3.0, "all": 2.6},
                names.LEARNING_RATE.name: 1e-3,
                names.MFU.name: 0.25,
                names.GROWTH_MASK.name: 0.5,
                names.STEP_SECONDS.name: 0.3,
            },
            2,
        )
        got = scrape(url)
    finally:
        prom.stop()
    assert got[("motif_step", ())] == 2
    assert got[("motif_tokens_total", (("language", "ko"),))] == 180  # totals, not sums of totals
    assert got[("motif_tokens_total", (("language", "en"),))] == 130
    assert got[("motif_loss", (("language", "en"),))] == 3.0
    assert got[("motif_learning_rate", ())] == 1e-3
    assert got[("motif_mfu", ())] == 0.25
    assert got[("motif_growth_mask", ())] == 0.5
    assert got[("motif_step_seconds_count", ())] == 1
    assert got[("motif_step_seconds_bucket", (("le", "0.5"),))] == 1
    assert (
        got[
            (
                "motif_stage_info",
                (("engine", "ddp"), ("growth", "msg"), ("params", "123"), ("stage", "s1"), ("world_size", "2")),
            )
        ]
        == 1
    )
    records = read(tmp_path / "m.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["motif_loss"]["ko"] == 2.25 and records[1]["stage"] == "s1"


def test_every_declared_metric_is_exported():
    prom = PrometheusBackend()
    exported = {f.name for f in prom.registry.collect()}
    for m in names.ALL:
        base = {"counter": m.name.removesuffix("_total"), "info": m.name}.get(m.kind, m.name)
        assert base in exported, m.name


def test_undeclared_names_are_refused_and_a_broken_backend_is_dropped(tmp_path):
    class Broken:
        def log(self, metrics, step):
            raise OSError("disk full")

        def close(self):
            pass

    jsonl = JsonlBackend(tmp_path / "m.jsonl")
    logger = MetricLogger([Broken(), jsonl])
    with pytest.raises(KeyError, match="not declared"):
        logger.log({"motif_made_up": 1}, 0)
    logger.log({names.STEP.name: 1}, 1)
    logger.log({names.STEP.name: 2}, 2)
    assert logger.backends == [jsonl]
    assert [r["motif_step"] for r in read(tmp_path / "m.jsonl")] == [1, 2]


@pytest.mark.slow
def test_a_real_run_exports_its_values_and_lingers(workdir):
    """`motif train --metrics-port 0 --linger-seconds`: the URL is printed, the values after the run
    match the JSONL log, and the exporter keeps serving after training ends."""
    import subprocess
    import time

    from .conftest import stage_section, subprocess_env, train_command, write_stage

    stage = write_stage(workdir, stage_section("exp", train={"max_steps": 6}))
    proc = subprocess.Popen(
        train_command(stage, "--linger-seconds", "120"),
        cwd=workdir,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "metrics at http://" in line, line
        url = line.split("metrics at ", 1)[1].strip()
        deadline = time.monotonic() + 120
        while not (workdir / "out/exp/config.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(0.5)
        got = scrape(url)
        assert proc.poll() is None  # still serving after the run
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    last = [r for r in read(workdir / "ck/exp/metrics.jsonl") if "motif_loss" in r][-1]
    assert got[("motif_step", ())] == 6
    tokens = got[("motif_tokens_total", (("language", "ko"),))] + got[("motif_tokens_total", (("language", "en"),))]
    assert tokens == 6 * 4 * 32 == sum(last["motif_tokens_total"].values())
    assert got[("motif_loss", (("language", "all"),))] == pytest.approx(last["motif_loss"]["all"])
    assert got[("motif_step_seconds_count", ())] == 6
    assert 0 < got[("motif_mfu", ())] < 1
    assert got[("motif_world_size", ())] == 1
    assert got[("motif_growth_mask", ())] == 1.0
    assert got[("motif_learning_rate", ())] == pytest.approx(last["motif_learning_rate"])
