"""`motif eval --pushgateway` malformed: refused before the checkpoint is read, one line, exit 2, nothing written."""

from __future__ import annotations

import pytest

from motif.cli import main


@pytest.mark.parametrize(
    "gateway", ["ftp://prom:9091", "http://", "prom:notaport", "http://prom:99999", "http://pr om:9091"]
)
def test_a_malformed_pushgateway_is_refused_before_evaluating(tmp_path, capsys, gateway):
    missing = tmp_path / "no-checkpoint"  # never read: the flag is checked first
    code = main(["eval", str(missing), "--tasks", "kmmlu", "--pushgateway", gateway, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"motif eval: error: --pushgateway: expected host:port or an http(s) URL, got {gateway!r}")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_good_pushgateway_passes_the_check():
    from motif.eval.push import check_gateway

    for gateway in ("prom:9091", "http://prometheus-pushgateway.monitoring.svc:9091", "https://pg.example/push"):
        check_gateway(gateway)
