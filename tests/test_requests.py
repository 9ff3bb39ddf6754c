"""argparse's Namespace stops at each command's `run`: every function below it takes typed values or
a request dataclass (motif/request.py). Checked on the source: a parameter annotated as a Namespace
anywhere but a command's entry point is a failure, and so is a command helper handed `args` untyped."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The entry points that receive argparse's result: the CLI itself, each command's `run`, and the
# two conversions to a typed request.
ENTRY_POINTS = {"run", "from_args", "from_namespace", "main", "kubectl_plugin_main", "_dispatch"}
CONVERSIONS = {"from_namespace", "from_args"}


def _callee(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")


def namespace_handed_down(source: str) -> list[str]:
    """Calls in a `run(args)` that pass the Namespace itself to anything but a conversion."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == "run" and node.args.args:
            first = node.args.args[0]
            if "Namespace" not in (ast.unparse(first.annotation) if first.annotation is not None else ""):
                continue  # not a command's entry point (mix/local.py's run takes a sweep directory)
            name = first.arg
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and _callee(call) not in CONVERSIONS:
                    passed = [*call.args, *(k.value for k in call.keywords)]
                    if any(isinstance(a, ast.Name) and a.id == name for a in passed):
                        found.append(f"run hands {name} to {_callee(call)}() at line {call.lineno}")
    return found


def namespace_parameters(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            params = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            for arg in params:
                note = ast.unparse(arg.annotation) if arg.annotation is not None else ""
                if "Namespace" in note and node.name not in ENTRY_POINTS:
                    found.append(f"{node.name}({arg.arg}: {note}) at line {node.lineno}")
    return found


def _offenders(check) -> dict[str, list[str]]:
    # motif/cli.py is the dispatcher: it hands the Namespace to each command's `run`.
    return {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / "motif").rglob("*.py"))
        if path.name != "cli.py" and (found := check(path.read_text()))
    }


def test_only_entry_points_take_a_namespace():
    assert _offenders(namespace_parameters) == {}


def test_no_run_hands_its_namespace_down():
    assert _offenders(namespace_handed_down) == {}


def test_the_check_sees_a_namespace_passed_down():
    """Negative control: a helper below `run` that takes the Namespace is found."""
    source = "import argparse\ndef run(args: argparse.Namespace):\n    helper(args)\n"
    source += "def helper(args: argparse.Namespace):\n    return args.flag\n"
    assert namespace_parameters(source) == ["helper(args: argparse.Namespace) at line 4"]
    assert namespace_handed_down(source) == ["run hands args to helper() at line 3"]
