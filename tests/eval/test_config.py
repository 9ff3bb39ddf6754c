"""The `motif.eval` section of a stage file: validated strictly, errors naming the file and the key."""

from __future__ import annotations

import copy

import pytest

from motif.config import ConfigError, EvalConfig, HeldoutSource, parse_stage

BASE = {
    "name": "s",
    "output": "out/final",
    "model": {
        "vocab_size": 384,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "data": {
        "tokenizer": "tok",
        "seq_len": 32,
        "sources": [{"name": "ko", "language": "ko", "weight": 1.0, "path": "data/ko.jsonl"}],
    },
    "optim": {"lr": 1e-3},
    "train": {"max_steps": 10, "micro_batch_size": 2},
    "checkpoint": {"dir": "ck"},
}


def stage(**eval_section):
    section = copy.deepcopy(BASE)
    section["eval"] = eval_section
    return parse_stage(section, source="stage.yaml")


def test_a_full_section_parses():
    s = stage(
        tasks=["kmmlu", "kobest", "mmlu"],
        num_fewshot=5,
        data_dir="/data/eval",
        include_path="/tasks",
        limit=100,
        every_steps=500,
        heldout=[{"name": "ko-h", "language": "ko", "path": "/data/heldout/ko.jsonl"}],
        pushgateway="http://pushgateway.monitoring:9091",
        out="/results/s",
    )
    assert s.eval == EvalConfig(
        ["kmmlu", "kobest", "mmlu"],
        5,
        "/data/eval",
        "/tasks",
        100,
        500,
        [HeldoutSource("ko-h", "ko", "/data/heldout/ko.jsonl", "text")],
        "http://pushgateway.monitoring:9091",
        "/results/s",
    )
    assert parse_stage(copy.deepcopy(BASE)).eval is None
    assert stage(tasks=["kmmlu"], pushgateway="pushgateway:9091").eval.pushgateway == "pushgateway:9091"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"taskz": ["kmmlu"]}, "stage.yaml: motif.eval.taskz: unknown key (expected one of: tasks, num_fewshot"),
        ({"tasks": "kmmlu"}, "stage.yaml: motif.eval.tasks: expected a list, got 'kmmlu' (str)"),
        ({"tasks": ["kmmlu", 5]}, "stage.yaml: motif.eval.tasks[1]: expected a non-empty string, got 5 (int)"),
        ({"tasks": ["kmmlu", "kmmlu"]}, "stage.yaml: motif.eval.tasks: task names must be unique"),
        ({}, "stage.yaml: motif.eval: names no tasks and no heldout sets"),
        ({"tasks": ["mmlu"], "num_fewshot": -1}, "stage.yaml: motif.eval.num_fewshot: expected >= 0, got -1"),
        ({"tasks": ["mmlu"], "limit": 0}, "stage.yaml: motif.eval.limit: expected > 0, got 0"),
        ({"tasks": ["mmlu"], "every_steps": 100}, "stage.yaml: motif.eval.every_steps: 100 needs motif.eval.heldout"),
        (
            {"heldout": [{"name": "h", "language": "ko"}]},
            "stage.yaml: motif.eval.heldout[0].path: missing required key",
        ),
        (
            {"heldout": [{"name": "h", "language": "ko", "path": "data/ko.jsonl"}]},
            "stage.yaml: motif.eval.heldout[0].path: data/ko.jsonl is also motif.data.sources[0].path; "
            "held-out text must never be trained on",
        ),
        (
            {"heldout": [{"name": "h", "language": "ko", "path": "a"}, {"name": "h", "language": "en", "path": "b"}]},
            "stage.yaml: motif.eval.heldout: source names must be unique",
        ),
        (
            {"tasks": ["mmlu"], "pushgateway": "ftp://gw:21"},
            "stage.yaml: motif.eval.pushgateway: expected host:port or an http(s) URL, got 'ftp://gw:21'",
        ),
    ],
)
def test_bad_sections_name_the_key(section, message):
    with pytest.raises(ConfigError) as err:
        stage(**section)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_every_stage_file_of_the_recipes_parses(tmp_path):
    from pathlib import Path

    from motif.config import load_stage

    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "jobs").glob("*/*.yaml"))
    assert files
    for file in files:
        s = load_stage(file)
        assert s.eval is not None, f"{file}: no motif.eval section"
        assert s.eval.tasks and s.eval.heldout, file


def test_the_102b_stages_evaluate_the_papers_kmmlu_direct_beside_kmmlu():
    from pathlib import Path

    from motif.config import load_stage

    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "jobs" / "llama3-motif-102b").glob("*.yaml"))
    assert len(files) == 3
    for file in files:
        tasks = load_stage(file).eval.tasks
        assert "kmmlu_direct" in tasks and "kmmlu" in tasks, f"{file}: motif.eval.tasks {tasks}"
        assert load_stage(file).eval.num_fewshot == 5, f"{file}: the paper's setting is 5-shot"
