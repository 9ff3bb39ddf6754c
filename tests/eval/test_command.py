"""`motif eval` as users drive it: --json, --stage, reuse of a finished result, bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from motif.cli import main

CONTRACT_KEYS = {"stage", "checkpoint", "tasks", "heldout", "finished", "motif_version"}


def tree(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))} if path.exists() else {}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["eval", *argv, "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def ckpt(plain_ckpt, tmp_path) -> Path:
    """A private copy: results default to CHECKPOINT/eval."""
    return Path(shutil.copytree(plain_ckpt, tmp_path / "ckpt" / "final"))


def test_json_prints_task_metric_value_and_the_table_goes_to_stderr(ckpt, tokenizer_dir, tasks_dir, capsys):
    code, out, err = run(
        capsys, str(ckpt), "--tasks", "tiny_kmmlu,tiny_kobest_copa", "--include-path", str(tasks_dir),
        "--tokenizer", str(tokenizer_dir), "--limit", "4", "--json",
    )  # fmt: skip
    assert code == 0, err
    scores = json.loads(out)
    assert set(scores) == {"tiny_kmmlu", "tiny_kobest_copa"}
    assert set(scores["tiny_kmmlu"]) == {"acc", "acc_stderr"}
    assert {"acc", "f1"} <= set(scores["tiny_kobest_copa"])
    assert all(isinstance(v, float) for m in scores.values() for v in m.values())
    assert "task" in err and "tiny_kmmlu" in err and "acc" in err  # the table
    summary = json.loads((ckpt / "eval" / "summary.json").read_text())
    assert set(summary) >= CONTRACT_KEYS and summary["tasks"] == scores
    assert summary["stage"] == "ckpt"  # <dir>/final is named after <dir>
    assert (ckpt / "eval" / "lm-eval-results.json").is_file()


def test_a_finished_result_is_reused_and_a_new_request_recomputes(ckpt, tokenizer_dir, tasks_dir, tmp_path, capsys):
    tasks = Path(shutil.copytree(tasks_dir, tmp_path / "tasks"))
    argv = [str(ckpt), "--tasks", "tiny_mmlu", "--include-path", str(tasks), "--tokenizer", str(tokenizer_dir)]
    assert run(capsys, *argv, "--limit", "3")[0] == 0
    before = tree(ckpt / "eval")
    code, out, err = run(capsys, *argv, "--limit", "3")
    assert code == 0 and "reusing the finished result" in err
    assert "tiny_mmlu" in out  # the table, from the summary
    assert tree(ckpt / "eval") == before, "a reused result is not rewritten"
    code, _, err = run(capsys, *argv, "--limit", "2")
    assert code == 0 and "reusing" not in err
    assert json.loads((ckpt / "eval" / "summary.json").read_text())["request"]["limit"] == 2
    (tasks / "tiny_mmlu.yaml").write_text((tasks / "tiny_mmlu.yaml").read_text() + "\n")  # an edited task file
    code, _, err = run(capsys, *argv, "--limit", "2")
    assert code == 0 and "reusing" not in err


def test_stage_evaluates_its_output_with_heldout_sets(
    ckpt, tokenizer_dir, tasks_dir, workdir, tmp_path, monkeypatch, capsys
):
    from motif.data.corpus import write_corpus

    heldout = write_corpus(tmp_path / "heldout", docs_per_language=4, seed=9)
    stage = {
        "motif": {
            "name": "tiny-s9",
            "output": str(ckpt),
            "input": str(tmp_path / "start"),
            "data": {
                "tokenizer": str(tokenizer_dir),
                "seq_len": 32,
                "sources": [
                    {"name": "ko", "language": "ko", "weight": 0.5, "path": str(workdir / "data" / "ko.jsonl")},
                    {"name": "en", "language": "en", "weight": 0.5, "path": str(workdir / "data" / "en.jsonl")},
                ],
            },
            "optim": {"lr": 1e-3},
            "train": {"max_steps": 10, "micro_batch_size": 2},
            "checkpoint": {"dir": str(tmp_path / "ck")},
            "eval": {
                "tasks": ["tiny_kobest_boolq"],
                "include_path": str(tasks_dir),
                "num_fewshot": 1,
                "limit": 4,
                "heldout": [
                    {"name": "ko-held", "language": "ko", "path": str(heldout["ko"])},
                    {"name": "en-held", "language": "en", "path": str(heldout["en"])},
                ],
            },
        }
    }
    stage_file = tmp_path / "stage.yaml"
    stage_file.write_text(yaml.safe_dump(stage, allow_unicode=True))
    code, out, err = run(capsys, "--stage", str(stage_file))
    assert code == 0, err
    summary = json.loads((ckpt / "eval" / "summary.json").read_text())
    assert set(summary) >= CONTRACT_KEYS
    assert summary["stage"] == "tiny-s9" and summary["checkpoint"] == str(ckpt)
    assert set(summary["heldout"]) == {"ko", "en"} and all(0 < v < 20 for v in summary["heldout"].values())
    assert summary["request"]["num_fewshot"] == 1 and "tiny_kobest_boolq" in summary["tasks"]
    assert "held-out ko" in out and "bits_per_byte" in out
    assert "reusing" in run(capsys, "--stage", str(stage_file))[2]  # the eval Job's rerun is a no-op
    # As the eval Job runs it: the rerun still reports the scores as the termination message.
    log = tmp_path / "termination-log"
    monkeypatch.setenv("MOTIF_TERMINATION_LOG", str(log))
    assert "reusing" in run(capsys, "--stage", str(stage_file))[2]
    reported = json.loads(log.read_text())
    assert reported == {"stage": "tiny-s9", "scores": summary["tasks"], "heldout": summary["heldout"]}


def test_the_termination_log_carries_the_scores_of_a_new_and_a_reused_result(
    ckpt, tokenizer_dir, tasks_dir, tmp_path, monkeypatch, capsys
):
    """MOTIF_TERMINATION_LOG (the eval Job's terminationMessagePath) gets summary.json's scores as
    compact JSON, on the first run and on the rerun that reuses the result; a path it cannot write
    is one warning, not a failed evaluation; unset, nothing is written."""
    log = tmp_path / "termination-log"
    argv = [str(ckpt), "--tasks", "tiny_kmmlu,tiny_mmlu", "--include-path", str(tasks_dir)]
    argv += ["--tokenizer", str(tokenizer_dir), "--limit", "3"]
    monkeypatch.setenv("MOTIF_TERMINATION_LOG", str(log))
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    summary = json.loads((ckpt / "eval" / "summary.json").read_text())
    text = log.read_text()
    assert json.loads(text) == {"stage": "ckpt", "scores": summary["tasks"], "heldout": {}}
    assert set(summary["tasks"]) == {"tiny_kmmlu", "tiny_mmlu"}
    assert text == json.dumps(json.loads(text), separators=(",", ":")) and len(text.encode()) <= 4096

    log.unlink()
    code, _, err = run(capsys, *argv)
    assert code == 0 and "reusing the finished result" in err
    assert log.read_text() == text, "a reused result reports the same scores"

    monkeypatch.setenv("MOTIF_TERMINATION_LOG", str(tmp_path / "no-such-dir" / "termination-log"))
    code, out, err = run(capsys, *argv)
    assert code == 0 and "tiny_kmmlu" in out, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "no-such-dir" in warnings[0] and "Traceback" not in err, err

    monkeypatch.delenv("MOTIF_TERMINATION_LOG")
    log.unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(capsys, *argv)
    assert code == 0 and "warning" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not log.exists()


def test_a_long_report_drops_tasks_from_the_end_to_fit_4096_bytes():
    from motif.eval.results import termination_message

    tasks = {f"kmmlu_subject_{i:03d}": {"acc": 0.25 + i / 1000, "acc_stderr": 0.0123456789} for i in range(200)}
    summary = {"stage": "s3-cpt", "tasks": tasks, "heldout": {"ko": 0.612345, "en": 0.55}}
    text = termination_message(summary)
    report = json.loads(text)
    assert len(text.encode()) <= 4096 and report["truncated"] is True
    kept = list(report["scores"])
    assert 0 < len(kept) < 200 and kept == list(tasks)[: len(kept)], "the first tasks are kept, in order"
    assert report["scores"] == {t: tasks[t] for t in kept} and report["heldout"] == summary["heldout"]
    one_more = {**report, "scores": {t: tasks[t] for t in list(tasks)[: len(kept) + 1]}}
    assert len(json.dumps(one_more, separators=(",", ":"))) > 4096, "no more tasks dropped than needed"
    small = json.loads(termination_message({**summary, "tasks": {t: tasks[t] for t in kept[:3]}}))
    assert "truncated" not in small and len(small["scores"]) == 3
    assert summary["tasks"] is tasks and len(tasks) == 200, "the summary itself is left as it was"


@pytest.fixture
def bad_task_dir(tmp_path, tasks_dir) -> Path:
    """A task whose local data file is gone."""
    d = tmp_path / "bad-tasks"
    d.mkdir()
    config = json.loads((tasks_dir / "tiny_kmmlu.yaml").read_text())
    config["task"] = "tiny_kmmlu_gone"
    config["dataset_kwargs"]["data_files"]["test"] = str(tmp_path / "gone" / "test.jsonl")
    (d / "tiny_kmmlu_gone.yaml").write_text(json.dumps(config))
    return d


def _bad_cases(ckpt: Path, tokenizer: Path, tasks: Path, bad_tasks: Path, tmp: Path, make_ckpt) -> dict:
    base = ["--tokenizer", str(tokenizer), "--include-path", str(tasks)]
    smaller = make_ckpt(tmp / "vocab256", vocab_size=256)  # token ids past the embedding
    larger = make_ckpt(tmp / "vocab2048", vocab_size=2048)  # another tokenizer's model
    return {
        "unknown task": ([str(ckpt), "--tasks", "tiny_kmmlx", *base], "unknown task 'tiny_kmmlx'"),
        "missing local data": (
            [str(ckpt), "--tasks", "tiny_kmmlu_gone", "--tokenizer", str(tokenizer), "--include-path", str(bad_tasks)],
            "missing local data: " + str(tmp / "gone" / "test.jsonl"),
        ),
        "missing data dir file": (
            [str(ckpt), "--tasks", "tiny_kmmlu", *base, "--data-dir", str(tmp / "volume")],
            f"missing local data: {tmp / 'volume' / 'tiny_kmmlu' / 'test.jsonl'}",
        ),
        "no checkpoint": (
            [str(tmp / "nope"), "--tasks", "tiny_kmmlu", *base],
            f"{tmp / 'nope'}: not a checkpoint directory",
        ),
        "tokenizer larger than the embedding": (
            [str(smaller), "--tasks", "tiny_kmmlu", *base],
            f"tokenizer mismatch: {tokenizer} has 384 tokens, but {smaller} has vocab_size 256",
        ),
        "tokenizer of another model": (
            [str(larger), "--tasks", "tiny_kmmlu", *base],
            f"tokenizer mismatch: {tokenizer} has 384 tokens, but {larger} has vocab_size 2048",
        ),
        "no tokenizer": ([str(ckpt), "--tasks", "tiny_kmmlu", "--include-path", str(tasks)], "tokenizer.json: missing"),
        "negative few-shot": ([str(ckpt), "--tasks", "tiny_kmmlu", *base, "--num-fewshot", "-1"], "--num-fewshot"),
    }


CASES = (
    "unknown task",
    "missing local data",
    "missing data dir file",
    "no checkpoint",
    "tokenizer larger than the embedding",
    "tokenizer of another model",
    "no tokenizer",
    "negative few-shot",
)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(
    case, ckpt, tokenizer_dir, tasks_dir, bad_task_dir, tmp_path, make_ckpt, capsys
):
    argv, message = _bad_cases(ckpt, tokenizer_dir, tasks_dir, bad_task_dir, tmp_path, make_ckpt)[case]
    target = Path(argv[0])
    before = tree(target), tree(tmp_path / "out")
    code, out, err = run(capsys, *argv, "--out", str(tmp_path / "out"))
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("motif eval: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert (tree(target), tree(tmp_path / "out")) == before, "nothing is written on bad input"
    assert not (tmp_path / "out").exists() and not (target / "eval").exists()


def test_downloaded_data_dir_scores_as_the_source(ckpt, tokenizer_dir, tasks_dir, tmp_path, capsys):
    """--download-data writes <dir>/<task>/<split>.jsonl from where each task reads; --data-dir reads it back."""
    volume = tmp_path / "volume"
    base = [str(ckpt), "--tasks", "tiny_kmmlu,tiny_kobest_copa", "--include-path", str(tasks_dir)]
    base += ["--tokenizer", str(tokenizer_dir), "--num-fewshot", "1", "--log-samples"]
    code, out, err = run(capsys, *base, "--data-dir", str(volume), "--download-data")
    assert code == 0, err
    assert sorted(str(p.relative_to(volume)) for p in volume.rglob("*.jsonl")) == [
        "tiny_kmmlu/dev.jsonl",
        "tiny_kmmlu/test.jsonl",
        "tiny_kobest_copa/test.jsonl",
        "tiny_kobest_copa/train.jsonl",
    ]
    assert not (ckpt / "eval").exists(), "downloading evaluates nothing"
    assert run(capsys, *base, "--out", str(tmp_path / "hub"))[0] == 0
    assert run(capsys, *base, "--out", str(tmp_path / "local"), "--data-dir", str(volume))[0] == 0
    for task in ("tiny_kmmlu", "tiny_kobest_copa"):
        hub, local = ((tmp_path / d / f"samples_{task}.jsonl").read_text().splitlines() for d in ("hub", "local"))
        assert [json.loads(x)["filtered_resps"] for x in hub] == [json.loads(x)["filtered_resps"] for x in local]
