"""A task's prompt templates and local data, checked before the model loads.

Why it is built this way:

* **Fail in a second, not after the load.** Loading a 102B checkpoint takes minutes on a node of
  GPUs; lm-eval reads a task's templates and data only after that, and a broken one then ends the
  run with a traceback from deep inside Jinja2, `datasets` or the few-shot sampler. Every fault
  found here is one line naming the file, the key or line, and what was expected.
* **The same rules lm-eval applies.** Templates are parsed by lm-eval's own Jinja2 environment
  (`lm_eval.utils.env`, which renders them later); the few-shot pool must hold `num_fewshot`
  rows, one more when the YAML names the test split as the few-shot split (lm-eval then leaves the
  evaluated row out of its own context); local data is what the `json` builder reads: JSON Lines
  of objects, or one JSON array.
* **Only what can be checked without the hub.** A task whose data comes from the hub is checked
  for its templates only; its rows are lm-eval's to read. Rows are counted as stored: a task's
  `process_docs` may drop some later, which this check cannot know without running task code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from motif.eval.tasks import Leaf, TaskError

# The config keys lm-eval renders as Jinja2 templates (at the top level and in fewshot_config).
TEMPLATE_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice", "description", "gen_prefix")


def check_templates(leaf: Leaf) -> None:
    """Every template the task renders parses: a syntax error is named by file, key and line."""
    from jinja2 import TemplateSyntaxError
    from lm_eval.utils import env

    fewshot = leaf.config.get("fewshot_config")
    sections = [("", leaf.config)] + ([("fewshot_config.", fewshot)] if isinstance(fewshot, dict) else [])
    for prefix, config in sections:
        for key in TEMPLATE_KEYS:
            template = config.get(key)
            if not isinstance(template, str) or not any(mark in template for mark in ("{{", "{%", "{#")):
                continue  # a field name, a function reference or plain text: nothing to parse
            try:
                env.parse(template)
            except TemplateSyntaxError as e:
                raise TaskError(
                    f"{leaf.yaml_path}: {prefix}{key}: template syntax error at line {e.lineno}: {e.message} "
                    f"(task {leaf.name}; expected a Jinja2 template, as lm-eval renders it)"
                ) from None


def count_rows(path: Path, task: str, split: str) -> int:
    """Rows of a local JSON data file, each checked to be a JSON object; the first bad line is named."""
    where = f"(task {task}, split {split}; expected one JSON object per line, or a JSON array of objects)"
    try:
        with path.open("rb") as f:
            head = f.read(4096).lstrip()
    except OSError as e:
        raise TaskError(f"{path}: cannot read: {e.strerror}") from None
    rows = _array_rows(path, where) if head.startswith(b"[") else _line_rows(path, where)
    return sum(1 for _ in rows)


def _array_rows(path: Path, where: str) -> Iterator[Any]:
    try:
        rows = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TaskError(f"{path}: not valid JSON ({_reason(e)}) {where}") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TaskError(f"{path}: item {i} is a {type(row).__name__}, not an object {where}")
        yield row


def _line_rows(path: Path, where: str) -> Iterator[Any]:
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TaskError(f"{path}: line {number}: not JSON ({_reason(e)}) {where}") from None
            if not isinstance(row, dict):
                raise TaskError(f"{path}: line {number}: a {type(row).__name__}, not an object {where}")
            yield row


def _reason(e: Exception) -> str:
    return e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"


def check_data(leaf: Leaf, data_files: Any, num_fewshot: int | None) -> None:
    """The task's local splits: readable rows, an evaluated split with rows, enough few-shot rows.

    `data_files` is the task's `dataset_kwargs.data_files` as `datasets` reads it: a dict of
    split -> file(s), or file(s) that are all one `train` split. Patterns (globs) are not expanded.
    """
    files = data_files if isinstance(data_files, dict) else {"train": data_files}
    counts: dict[str, int] = {}
    for split, value in files.items():
        paths = value if isinstance(value, list) else [value]
        if any(any(c in str(p) for c in "*?[") for p in paths):
            continue
        counts[str(split)] = sum(count_rows(Path(p), leaf.name, str(split)) for p in paths)
    evaluated = leaf.eval_split()
    if evaluated in counts and counts[evaluated] == 0:
        raise TaskError(
            f"{_file(files, evaluated)}: split {evaluated} of task {leaf.name} is empty "
            "(expected at least one row to evaluate)"
        )
    shots, pool, named = leaf.shots(num_fewshot), leaf.fewshot_split(), _named_fewshot_split(leaf)
    fewshot = leaf.config.get("fewshot_config")
    if named is None and isinstance(fewshot, dict) and fewshot.get("samples") is not None:
        return  # examples written in the YAML, not drawn from a split
    if shots <= 0 or pool not in counts:
        return
    # lm-eval's own test: `fewshot split == test_split`, so a task with neither also leaves one out.
    leaves_one_out = named == leaf.config.get("test_split")
    needed = shots + 1 if leaves_one_out else shots
    if counts[pool] < needed:
        extra = " plus the evaluated row it leaves out" if leaves_one_out else ""
        raise TaskError(
            f"{_file(files, pool)}: split {pool} of task {leaf.name} has {counts[pool]} rows, too few for "
            f"num_fewshot {shots}{extra} (expected at least {needed}; lower --num-fewshot or add rows)"
        )


def _named_fewshot_split(leaf: Leaf) -> str | None:
    """The few-shot split the YAML names. lm-eval leaves the evaluated row out of its context only
    when this is the test split; a few-shot pool it falls back to (no split named) keeps every row."""
    fewshot = leaf.config.get("fewshot_config")
    named = fewshot.get("split") if isinstance(fewshot, dict) else None
    return named or leaf.config.get("fewshot_split")  # fewshot_config's own split wins, as in lm-eval


def _file(files: dict, split: str) -> str:
    value = files[split]
    return str(value[0] if isinstance(value, list) and len(value) == 1 else value)
