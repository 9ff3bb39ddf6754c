"""Every PromQL expression of the dashboards parses (promtool, as recording rules), variables substituted."""

from __future__ import annotations

import subprocess

import yaml

from monitoring.promql import dashboard_queries, substitute, variable_queries

# Values Grafana would put in for the variables (All selected).
VARIABLES = {
    "namespace": ".*",
    "job": ".*",
    "stage": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "6h",
}


def test_every_dashboard_expression_parses(dashboards, promtool, tmp_path):
    rules = []
    for name, d in dashboards.items():
        exprs = [e for _, _, e in dashboard_queries(d)]
        exprs += [q for _, q in variable_queries(d)]
        exprs += [a["expr"] for a in d["annotations"].get("list", []) if a.get("expr")]
        assert len(exprs) > 10, name
        for i, expr in enumerate(exprs):
            concrete = substitute(expr, VARIABLES)
            assert "$" not in concrete.replace('"$1"', ""), concrete
            rules.append({"record": f"dashboard:{name.removesuffix('.json')}:{i}", "expr": concrete})
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout


def test_promtool_rejects_a_broken_expression(promtool, tmp_path):
    path = tmp_path / "bad.rules.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum by (job (up)"}]}]})
    )
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


def test_substitute_handles_grafana_forms():
    assert (
        substitute('x{a=~"$job", p=~"(${job:regex})-0"}[$__rate_interval]', VARIABLES) == 'x{a=~".*", p=~"(.*)-0"}[1m]'
    )
