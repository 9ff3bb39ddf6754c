"""The import contracts of docs/architecture.md (pyproject.toml's [tool.importlinter]) hold on the
package, and each one fails when a module breaks it: a copy of the package gets one forbidden import
per case and `lint-imports` must name the broken contract."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# (module that gets the import, the import, a word of the broken contract's name)
VIOLATIONS = [
    ("motif/model/args.py", "import motif.train.trainer", "layers"),
    ("motif/growth/targets.py", "import motif.eval.heldout", "layers"),
    ("motif/train/slices.py", "import motif.cli", "layers"),
    ("motif/config.py", "import motif.growth.streamed", "the config is a leaf"),
    ("motif/config.py", "import motif.model.model", "the config is a leaf"),
    ("motif/data/mixture.py", "import motif.model.model", "data and metrics"),
    ("motif/metrics/names.py", "import motif.train.trainer", "data and metrics"),
    ("motif/storage/atomic.py", "import motif.config", "storage, errors, request and teardown"),
    ("motif/request.py", "import motif.config", "storage, errors, request and teardown"),
    ("motif/teardown.py", "import motif.train.dist", "storage, errors, request and teardown"),
    ("motif/train/command.py", "import motif_dev.deploy.images", "repository tooling"),
]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_every_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), VIOLATIONS, ids=[v[1] for v in VIOLATIONS])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    for package in ("motif", "motif_dev"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # a deliberate violation\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout[-3000:]
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, done.stdout[-3000:]
