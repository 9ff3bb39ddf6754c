"""A bad evaluation task is refused before the model loads: one line naming the file and the key or line, exit 2.

Each case breaks one thing of a tiny KMMLU-direct task (its own YAML over lm-eval's, local JSON
Lines data): a template that does not parse, a row that is not JSON, an empty evaluated split, a
few-shot split with fewer rows than `--num-fewshot` asks for. The task is read from its YAML's
`data_files` and, for the data cases, also from a `--data-dir` layout. Loading the model fails the
test outright, so a refusal that comes only after the load (or from lm-eval's traceback) fails it;
every file under the case's directory is hashed before and after, and `--out` is never created.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from motif.cli import main

from ..eval.conftest import VOCAB, kmmlu_rows, make_checkpoint, packaged

TASK = "bad_kmmlu_direct"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    from motif.data.corpus import documents
    from motif.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("eval-task-inputs")
    train_bpe(documents("ko", 100, 1) + documents("en", 100, 1), VOCAB, root / "tokenizer")
    return {"tokenizer": root / "tokenizer", "ckpt": make_checkpoint(root / "ckpt")}


@pytest.fixture
def no_model_load(monkeypatch):
    import motif.eval.loader

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the task was checked")

    monkeypatch.setattr(motif.eval.loader, "load_eval_model", refuse)


def write_task(root: Path, test_rows: str, dev_rows: str, **overrides) -> Path:
    """The task YAML under root/tasks, its data under root/data/<task>/<split>.jsonl; returns the task dir."""
    data = root / "data" / TASK
    data.mkdir(parents=True, exist_ok=True)
    (data / "test.jsonl").write_text(test_rows, encoding="utf-8")
    (data / "dev.jsonl").write_text(dev_rows, encoding="utf-8")
    config = {
        "task": TASK,
        "include": str(packaged("kmmlu/direct/_direct_kmmlu_yaml")),
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data / "test.jsonl"), "dev": str(data / "dev.jsonl")}},
        **overrides,
    }
    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / f"{TASK}.yaml").write_text(json.dumps(config, ensure_ascii=False, indent=1))
    return tasks


def rows(n: int, offset: int = 0) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kmmlu_rows(n, offset))


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def refused(root: Path, assets: dict[str, Path], capsys, *extra: str) -> str:
    """Run motif eval on the task in root; assert the refusal's shape and return its one line."""
    before = snapshot(root)
    argv = ["eval", str(assets["ckpt"]), "--tasks", TASK, "--include-path", str(root / "tasks")]
    argv += ["--tokenizer", str(assets["tokenizer"]), "--device", "cpu", "--out", str(root / "out"), *extra]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("motif eval: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert snapshot(root) == before and not (root / "out").exists()
    return err.removeprefix("motif eval: error: ").strip()


def test_a_template_syntax_error_is_named_by_file_and_key(tmp_path, assets, capsys, no_model_load):
    tasks = write_task(tmp_path, rows(4), rows(3, 100), doc_to_text="{{question.strip()}\nA. {{A}}")
    line = refused(tmp_path, assets, capsys)
    assert line.startswith(f"{tasks / f'{TASK}.yaml'}: doc_to_text: template syntax error at line 1: "), line
    assert f"task {TASK}" in line


def test_a_template_error_in_the_few_shot_config_is_named_too(tmp_path, assets, capsys, no_model_load):
    write_task(tmp_path, rows(4), rows(3, 100), fewshot_config={"doc_to_target": "{% if answer %}A"})
    line = refused(tmp_path, assets, capsys)
    assert ": fewshot_config.doc_to_target: template syntax error at line 1: " in line, line


@pytest.mark.parametrize("layout", ["yaml", "data-dir"])
def test_a_row_that_is_not_json_is_named_by_file_and_line(tmp_path, assets, capsys, no_model_load, layout):
    write_task(tmp_path, rows(2) + "{'question': 'single quotes'}\n" + rows(1, 50), rows(3, 100))
    extra = ("--data-dir", str(tmp_path / "data")) if layout == "data-dir" else ()
    line = refused(tmp_path, assets, capsys, *extra)
    assert line.startswith(f"{tmp_path / 'data' / TASK / 'test.jsonl'}: line 3: not JSON ("), line
    assert "expected one JSON object per line" in line


def test_a_row_that_is_json_but_not_an_object_is_named(tmp_path, assets, capsys, no_model_load):
    write_task(tmp_path, rows(2), rows(2, 100) + '["a", "list"]\n')
    line = refused(tmp_path, assets, capsys)
    assert line.startswith(f"{tmp_path / 'data' / TASK / 'dev.jsonl'}: line 3: a list, not an object"), line


@pytest.mark.parametrize("layout", ["yaml", "data-dir"])
def test_an_empty_evaluated_split_is_refused(tmp_path, assets, capsys, no_model_load, layout):
    write_task(tmp_path, "\n", rows(3, 100))
    extra = ("--data-dir", str(tmp_path / "data")) if layout == "data-dir" else ()
    line = refused(tmp_path, assets, capsys, *extra)
    assert line == (
        f"{tmp_path / 'data' / TASK / 'test.jsonl'}: split test of task {TASK} is empty "
        "(expected at least one row to evaluate)"
    )


@pytest.mark.parametrize("layout", ["yaml", "data-dir"])
def test_too_few_few_shot_rows_are_refused(tmp_path, assets, capsys, no_model_load, layout):
    write_task(tmp_path, rows(4), rows(2, 100))
    extra = ("--data-dir", str(tmp_path / "data")) if layout == "data-dir" else ()
    line = refused(tmp_path, assets, capsys, "--num-fewshot", "3", *extra)
    assert line.startswith(
        f"{tmp_path / 'data' / TASK / 'dev.jsonl'}: split dev of task {TASK} has 2 rows, too few for num_fewshot 3 "
        "(expected at least 3;"
    ), line


def test_few_shot_from_the_evaluated_split_needs_one_row_more(tmp_path, assets, capsys, no_model_load):
    # lm-eval leaves the evaluated row out of its own context: 3 rows give at most 2 examples.
    write_task(tmp_path, rows(3), rows(3, 100), fewshot_split="test")
    line = refused(tmp_path, assets, capsys, "--num-fewshot", "3")
    assert "split test of task" in line and "has 3 rows, too few for num_fewshot 3 plus the evaluated row" in line
    assert "expected at least 4" in line


def test_a_good_task_passes_the_check_and_evaluates(tmp_path, assets, capsys):
    # The same task, unbroken and at the edge (few-shot rows == num_fewshot), runs to a score.
    write_task(tmp_path, rows(2), rows(3, 100) + "\n")  # a blank line is not a row
    out = tmp_path / "out"
    argv = ["eval", str(assets["ckpt"]), "--tasks", TASK, "--include-path", str(tmp_path / "tasks")]
    argv += ["--tokenizer", str(assets["tokenizer"]), "--device", "cpu", "--num-fewshot", "3", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["tasks"][TASK]["exact_match"] <= 1.0


def test_a_few_shot_pool_lm_eval_falls_back_to_keeps_every_row(tmp_path, assets, capsys, no_model_load):
    # No few-shot split named: lm-eval draws from the test split without leaving the evaluated row out.
    write_task(tmp_path, rows(2), rows(3, 100), fewshot_split=None)
    line = refused(tmp_path, assets, capsys, "--num-fewshot", "3")
    assert "split test of task" in line and "has 2 rows, too few for num_fewshot 3 (expected at least 3;" in line


def test_examples_written_in_the_yaml_are_not_counted_as_a_split(tmp_path):
    # fewshot_config.samples: lm-eval takes the examples from the YAML; the data's splits are not the pool.
    from motif.eval.tasks import plan_tasks

    samples = [json.loads(line) for line in rows(3, 100).splitlines()]
    tasks = write_task(tmp_path, rows(2), "", fewshot_split=None, fewshot_config={"samples": samples})
    plan = plan_tasks([TASK], [tasks], num_fewshot=3)
    assert list(plan.leaves) == [TASK]
