"""lm-eval's own tasks offline: packaged KMMLU, KoBEST and MMLU tasks read their data from a local directory.

This is how a cluster without hub access evaluates: the data on a volume, laid out as
`<data_dir>/<task>/<split>.jsonl`; the packaged prompts, few-shot splits, metrics and group
aggregation stay lm-eval's. Indexing the built-in tasks takes a while (once per module).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from motif.cli import main
from motif.eval.tasks import TaskError, plan_tasks

pytestmark = pytest.mark.slow


def rows_for(task: str, n: int) -> list[dict]:
    i = range(n)
    if task.startswith("hrm8k_"):
        return [{"question": f"{k} 더하기 {k}는 얼마입니까?", "answer": str(2 * k)} for k in i]
    if task.startswith("kmmlu_"):
        return [{"question": f"질문 {k}?", "A": "가", "B": "나", "C": "다", "D": "라", "answer": 1 + k % 4} for k in i]
    if task.startswith("mmlu_"):
        return [
            {"question": f"Question {k}?", "subject": "anatomy", "choices": ["w", "x", "y", "z"], "answer": k % 4}
            for k in i
        ]
    return {
        "kobest_boolq": [{"paragraph": f"문단 {k}.", "question": "맞습니까?", "label": k % 2} for k in i],
        "kobest_copa": [
            {
                "premise": f"전제 {k}.",
                "question": "결과",
                "alternative_1": "가.",
                "alternative_2": "나.",
                "label": k % 2,
            }
            for k in i
        ],
        "kobest_hellaswag": [
            {"context": f"맥락 {k}", **{f"ending_{j}": f"끝 {j}" for j in range(1, 5)}, "label": k % 4} for k in i
        ],
        "kobest_sentineg": [{"sentence": f"좋은 문장 {k}", "label": k % 2} for k in i],
        "kobest_wic": [{"word": "배", "context_1": "배를 탄다", "context_2": "배가 고프다", "label": k % 2} for k in i],
    }[task]


def write_volume(root: Path, splits: dict[str, list[str]], n: int = 4) -> Path:
    for task, names in splits.items():
        for split in names:
            path = root / task / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows_for(task, n)))
    return root


KOBEST = ("kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic")


def test_the_papers_benchmarks_expand_to_their_subtasks():
    plan = plan_tasks(["kmmlu", "haerae", "kobest", "click", "mmlu"])
    assert plan.include_defaults
    count = {}
    for name in plan.leaves:
        family = name.split("_")[0]
        count[family] = count.get(family, 0) + 1
    assert count == {"kmmlu": 45, "haerae": 5, "kobest": 5, "click": 11, "mmlu": 57}
    assert plan.leaves["kmmlu_accounting"].fewshot_split() == "dev"
    assert plan.leaves["mmlu_anatomy"].eval_split() == "test"


def test_packaged_tasks_and_a_group_run_from_a_local_data_dir(plain_ckpt, tokenizer_dir, tmp_path):
    volume = write_volume(
        tmp_path / "volume",
        {
            "kmmlu_accounting": ["test", "dev"],
            "mmlu_anatomy": ["test", "dev"],
            **{t: ["test", "train"] for t in KOBEST},
        },
    )
    out = tmp_path / "out"
    argv = ["eval", str(plain_ckpt), "--tasks", "kmmlu_accounting,mmlu_anatomy,kobest", "--data-dir", str(volume)]
    argv += ["--num-fewshot", "1", "--tokenizer", str(tokenizer_dir), "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--log-samples"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"kmmlu_accounting", "mmlu_anatomy", "kobest", *KOBEST} <= set(summary["tasks"])
    assert "acc" in summary["tasks"]["kobest"], "the group aggregates its subtasks"
    results = json.loads((out / "lm-eval-results.json").read_text())
    assert all(results["n-samples"][t]["effective"] == 4 for t in ("kmmlu_accounting", "mmlu_anatomy", *KOBEST))
    kmmlu = json.loads((out / "samples_kmmlu_accounting.jsonl").read_text().splitlines()[0])
    prompt = (
        kmmlu["arguments"]["gen_args_0"]["arg_0"] if isinstance(kmmlu["arguments"], dict) else kmmlu["arguments"][0][0]
    )
    assert prompt.count("정답：") == 2, "KMMLU's own prompt, with one few-shot example from the dev split"
    mmlu = json.loads((out / "samples_mmlu_anatomy.jsonl").read_text().splitlines()[0])
    prompt = (
        mmlu["arguments"]["gen_args_0"]["arg_0"] if isinstance(mmlu["arguments"], dict) else mmlu["arguments"][0][0]
    )
    assert prompt.startswith("The following are multiple choice questions (with answers) about anatomy.")


def test_a_missing_split_of_a_group_member_is_named(tmp_path):
    volume = write_volume(tmp_path / "volume", {t: ["test"] for t in KOBEST if t != "kobest_wic"})
    with pytest.raises(TaskError, match=f"missing local data: {volume / 'kobest_wic' / 'test.jsonl'}"):
        plan_tasks(["kobest"], data_dir=volume)
    with pytest.raises(TaskError, match=f"missing local data: {volume / 'kobest_boolq' / 'train.jsonl'}"):
        plan_tasks(["kobest"], data_dir=volume, num_fewshot=5)  # few-shot examples come from train


GENERATIVE = ("kmmlu_direct", "kmmlu_direct_hard", "hrm8k")


def test_the_papers_generative_benchmarks_plan_offline(tmp_path):
    plan = plan_tasks(list(GENERATIVE))
    assert all(leaf.config["output_type"] == "generate_until" for leaf in plan.leaves.values())
    direct = [n for n in plan.leaves if n.startswith("kmmlu_direct_") and not n.startswith("kmmlu_direct_hard_")]
    hard = [n for n in plan.leaves if n.startswith("kmmlu_direct_hard_")]
    hrm8k = [n for n in plan.leaves if n.startswith("hrm8k_")]
    assert (len(direct), len(hard), len(hrm8k)) == (45, 45, 5)
    splits = {n: ["test", "dev"] for n in direct + hard} | {n: ["test"] for n in hrm8k}
    volume = write_volume(tmp_path / "volume", splits, n=5)  # KMMLU's dev splits hold the 5 few-shot examples
    offline = plan_tasks(list(GENERATIVE), data_dir=volume, num_fewshot=5)
    assert offline.shadows["kmmlu_direct_accounting"]["dataset_kwargs"]["data_files"] == {
        "test": str(volume / "kmmlu_direct_accounting" / "test.jsonl"),
        "dev": str(volume / "kmmlu_direct_accounting" / "dev.jsonl"),
    }
    (volume / "hrm8k_ksm" / "test.jsonl").unlink()
    with pytest.raises(TaskError, match=f"missing local data: {volume / 'hrm8k_ksm' / 'test.jsonl'}"):
        plan_tasks(["hrm8k"], data_dir=volume)


def test_generative_packaged_tasks_run_from_a_local_data_dir(make_ckpt, tokenizer_dir, tmp_path):
    """KMMLU direct (5-shot from dev) and HRM8K (its own Python prompt and scorer, 2048 new tokens)."""
    ckpt = make_ckpt(tmp_path / "ckpt", max_position_embeddings=4096)  # HRM8K: 2048 new tokens + the prompt
    tasks = ("kmmlu_direct_accounting", "kmmlu_direct_hard_accounting", "hrm8k_gsm8k")
    volume = write_volume(tmp_path / "volume", {t: ["test", "dev"] for t in tasks[:2]} | {tasks[2]: ["test"]}, n=2)
    out = tmp_path / "out"
    argv = ["eval", str(ckpt), "--tasks", ",".join(tasks), "--data-dir", str(volume), "--tokenizer", str(tokenizer_dir)]
    assert main([*argv, "--out", str(out), "--device", "cpu", "--log-samples"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for task in tasks:
        assert 0.0 <= summary["tasks"][task]["exact_match"] <= 1.0
        rows = [json.loads(line) for line in (out / f"samples_{task}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(isinstance(r["resps"][0][0], str) for r in rows)
    kmmlu = json.loads((out / "samples_kmmlu_direct_accounting.jsonl").read_text().splitlines()[0])
    args = kmmlu["arguments"]
    prompt = args["gen_args_0"]["arg_0"] if isinstance(args, dict) else args[0][0]
    assert prompt.endswith("D. 라\n정답：") and prompt.count("정답：") == 1, "KMMLU direct's own zero-shot prompt"
    assert kmmlu["target"] in "ABCD"
