"""`pip wheel .` holds the product only: the motif package and its metadata. Repository tooling
(motif_dev: chart rendering, image builds), tests, benchmarks, charts and images stay in the checkout.
The wheel is built from a copy of the checkout's files, so the build leaves nothing in the tree."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def checkout_copy(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name.decode())
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("wheel")
    tree = checkout_copy(where / "tree")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(where), "."],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (found,) = where.glob("motif-*.whl")
    return found


def test_the_wheel_holds_only_the_product(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"motif", next(t for t in top if t.endswith(".dist-info"))}, sorted(top)
    # The commands a cluster runs are there; the tooling is not (a negative control on the listing).
    assert "motif/cli.py" in names and "motif/train/trainer.py" in names
    assert not [n for n in names if "deploy" in n or n.startswith(("tests/", "bench/", "charts/", "images/"))]


def test_helm_sweeps_from_an_installed_wheel_ask_for_a_checkout(wheel, tmp_path):
    """`motif mix sweep --helm` renders the chart, which only a checkout has: from the wheel it
    says so in one line (a MotifError, exit 2 at the CLI) instead of an ImportError."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "from motif.errors import MotifError\n"
        "from motif.mix import helm\n"
        "try:\n    helm._renderer()\nexcept MotifError as e:\n    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n{probe}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--helm: renders charts/motif-stage from a checkout" in done.stdout
    assert str(site) in done.stdout
