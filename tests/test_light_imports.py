"""The config, the data layer and every `--help` load without torch (2+ s of import on a laptop, more
in a pod's cold start): package `__init__`s import lazily and the CLI imports a command's code only in
its handler. Each check runs in a fresh interpreter, so nothing this session imported counts."""

import subprocess
import sys

import pytest

from motif.cli import build_parser

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # every `motif` subcommand


def loads_torch(code: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("module", ["motif.config", "motif.data.sources", "motif.model.args", "motif.growth.targets"])
def test_leaf_modules_load_without_torch(module):
    assert not loads_torch(f"import {module}")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_loads_without_torch(command):
    argv = ["--help"] if command is None else [command, "--help"]
    code = f"from motif import cli\ntry:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass"
    assert not loads_torch(code)


def test_the_check_itself_sees_torch_when_it_is_loaded():  # a negative control: the probe can fail
    assert loads_torch("import motif.model\nmotif.model.Llama")
