"""Write the generated dashboards, rules and rule tests; `--check` fails if the committed ones drift.

python -m monitoring.generate          # write monitoring/dashboards/*.json, monitoring/rules/*.yaml
python -m monitoring.generate --check  # exit 1 and name the files that differ from the sources
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from monitoring.dashboards import common, growth, training
from monitoring.rules import alerts

ROOT = Path(__file__).resolve().parent
DASHBOARDS = ROOT / "dashboards"
RULES = ROOT / "rules"
RULES_FILE = RULES / "motif-alerts.yaml"
RULES_TEST = RULES / "tests" / "motif-alerts.test.yaml"

YAML_HEADER = "# Generated from monitoring/rules/alerts.py by `make dashboards`: do not edit.\n"


def _yaml(doc: dict) -> str:
    return YAML_HEADER + yaml.safe_dump(doc, sort_keys=False, width=1000, allow_unicode=True)


def outputs() -> dict[Path, Callable[[], str]]:
    """Every generated file and the function that produces its text."""
    return {
        DASHBOARDS / "training.json": lambda: common.render(training.build()),
        DASHBOARDS / "growth.json": lambda: common.render(growth.build()),
        RULES_FILE: lambda: _yaml(alerts.rules_file()),
        RULES_TEST: lambda: _yaml(alerts.tests_file(f"../{RULES_FILE.name}")),
    }


def drifted() -> list[Path]:
    """Generated files whose committed text differs from what the sources produce now."""
    return [p for p, make in outputs().items() if not p.exists() or p.read_text() != make()]


def write() -> list[Path]:
    written = []
    for path, make in outputs().items():
        text = make()
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed file differs from its source")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        for p in stale:
            print(f"{p.relative_to(ROOT.parent)}: out of date; run `make dashboards`", file=sys.stderr)
        return 1 if stale else 0
    for p in write():
        print(f"wrote {p.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
