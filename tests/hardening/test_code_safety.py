"""Static safety rules over motif's own code: nothing here may execute or unpickle user input.

Weights travel only as safetensors (no torch.save, no pickled numpy), YAML only through safe_load,
any torch.load must pass weights_only=True, no model code is fetched (trust_remote_code), and no
shell string is ever built (subprocess gets argument lists).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("motif", "monitoring", "bench")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    # `model.eval()` on a call's result is a method, not the builtin: keep a placeholder base.
    parts.append(node.id if isinstance(node, ast.Name) else "<expr>")
    return ".".join(reversed(parts))


def violations(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe construct in `source`, as 'file:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in {"pickle", "cPickle", "dill", "marshal", "shelve"} for n in names):
                found.append(f"{where}: imports a pickle-family module")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in {"eval", "exec", "os.system", "os.popen", "compile"}:
            found.append(f"{where}: calls {name}")
        if name.endswith("yaml.load") or name in {"yaml.unsafe_load", "yaml.full_load", "yaml.load_all"}:
            found.append(f"{where}: {name} (use yaml.safe_load)")
        if name.endswith("torch.load"):
            weights_only = _keyword(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        if name.endswith("torch.save"):
            found.append(f"{where}: torch.save writes a pickle (use safetensors)")
        if name.endswith(("np.load", "numpy.load")):
            allow = _keyword(node, "allow_pickle")
            if not (allow is None or (isinstance(allow, ast.Constant) and allow.value is False)):
                found.append(f"{where}: {name} with allow_pickle")
        trust = _keyword(node, "trust_remote_code")
        if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
            found.append(f"{where}: {name} with trust_remote_code (runs code from the checkpoint)")
        if name.startswith("subprocess.") or name in {"Popen", "run", "check_call", "check_output"}:
            shell = _keyword(node, "shell")
            if isinstance(shell, ast.Constant) and shell.value is True:
                found.append(f"{where}: {name} with shell=True")
    return found


def _python_files() -> list[Path]:
    files = [p for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    assert files, "no source files found"
    return files


def test_the_checker_catches_each_rule():
    bad = """
import pickle
import yaml, torch, subprocess, os
eval("1")
yaml.load(open("x"))
torch.load("x")
torch.load("x", weights_only=False)
subprocess.run("ls " + user, shell=True)
os.system("rm -rf /")
torch.save(model.state_dict(), "x.pt")
np.load("x.npy", allow_pickle=True)
AutoModel.from_pretrained(path, trust_remote_code=True)
"""
    found = violations(bad)
    assert len(found) == 10, found
    ok = """
import yaml, torch, subprocess
model = load(path).eval()
yaml.safe_load("a: 1")
torch.load("x", weights_only=True)
subprocess.run(["ls", path], check=True)
np.load("x.npy")
AutoModel.from_pretrained(path, trust_remote_code=False)
"""
    assert violations(ok) == []


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_source_has_no_unsafe_constructs(path):
    assert violations(path.read_text(), str(path.relative_to(ROOT))) == []
