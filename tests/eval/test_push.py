"""Scores reach Prometheus: `motif eval` pushes to a real Pushgateway, a real Prometheus scrapes it.

Both run on 127.0.0.1 on free ports with temporary data directories (Debian `prometheus-pushgateway`
and `prometheus`), as `monitoring.local` starts them.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from monitoring.local import Prometheus, Pushgateway, free_port
from motif.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pushgateway():
    assert shutil.which("prometheus-pushgateway"), "prometheus-pushgateway not found: run `make deps`"
    with Pushgateway() as gw:
        yield gw
    assert gw.proc is None and gw.dir is None, "the Pushgateway was not stopped"


def _eval(ckpt, tokenizer, tasks, out, gateway: str, stage: str, *extra: str) -> int:
    return main(
        ["eval", str(ckpt), "--tasks", "tiny_kmmlu,tiny_kobest_copa", "--include-path", str(tasks)]
        + ["--tokenizer", str(tokenizer), "--limit", "4", "--out", str(out), "--device", "cpu"]
        + ["--pushgateway", gateway, "--stage-name", stage, *extra]
    )


def test_scores_are_pushed_and_scraped(pushgateway, prometheus_bin, plain_ckpt, tokenizer_dir, tasks_dir, tmp_path):
    with Prometheus(
        [f"127.0.0.1:{free_port()}"], interval="200ms", binary=prometheus_bin, pushgateway=pushgateway.address
    ) as prom:
        assert _eval(plain_ckpt, tokenizer_dir, tasks_dir, tmp_path / "a", pushgateway.url, "tiny-s0") == 0
        # host:port works as well as a URL; a second stage is a group of its own.
        assert _eval(plain_ckpt, tokenizer_dir, tasks_dir, tmp_path / "b", pushgateway.address, "tiny-s1") == 0
        page = pushgateway.metrics()
        pushed = [line for line in page.splitlines() if line.startswith("motif_eval_score{")]
        assert any('metric="acc",stage="tiny-s0",task="tiny_kmmlu"' in line for line in pushed), pushed
        assert "acc_stderr" not in page, "standard errors are not pushed"
        summary = json.loads((tmp_path / "a" / "summary.json").read_text())
        deadline = time.monotonic() + 20
        found = []
        while time.monotonic() < deadline and len(found) < 2 * 3:
            found = prom.query("motif_eval_score")
            time.sleep(0.3)
        got = {(s["metric"]["stage"], s["metric"]["task"], s["metric"]["metric"]): float(s["value"][1]) for s in found}
        assert got[("tiny-s0", "tiny_kmmlu", "acc")] == pytest.approx(summary["tasks"]["tiny_kmmlu"]["acc"])
        assert got[("tiny-s1", "tiny_kobest_copa", "f1")] == pytest.approx(summary["tasks"]["tiny_kobest_copa"]["f1"])
        assert set(got) == {
            (st, t, m)
            for st in ("tiny-s0", "tiny-s1")
            for t, m in (("tiny_kmmlu", "acc"), ("tiny_kobest_copa", "acc"), ("tiny_kobest_copa", "f1"))
        }
        assert all(s["metric"]["job"] == "motif-eval" for s in found), "honor_labels keeps the pusher's job"


def test_an_unreachable_gateway_fails_after_writing_the_results(plain_ckpt, tokenizer_dir, tasks_dir, tmp_path, capsys):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert _eval(plain_ckpt, tokenizer_dir, tasks_dir, tmp_path, dead, "tiny-s0") == 1
    err = capsys.readouterr().err
    assert f"cannot push scores to the Pushgateway at {dead}" in err
    assert (tmp_path / "summary.json").is_file(), "the results on disk are complete; a rerun reuses them"
