"""`motif eval` scores what lm-eval's own `hf` model scores, and a mid-growth checkpoint at m = 0 scores its source.

Every comparison runs the real harness end to end on tiny local tasks in the KMMLU, KoBEST and MMLU
formats (prompts and metrics from lm-eval's packaged YAMLs): the same accuracies, and per-sample
log-likelihoods within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from motif.cli import main

from .conftest import lm_eval_hf, read_samples

TASKS = ("tiny_kmmlu", "tiny_kobest_copa", "tiny_kobest_boolq", "tiny_mmlu")  # written by conftest.write_tasks

FEWSHOT = 2
TOL = 1e-4


def motif_eval(ckpt: Path, tokenizer: Path, tasks_dir: Path, out: Path, *extra: str) -> dict:
    argv = ["eval", str(ckpt), "--tasks", ",".join(TASKS), "--include-path", str(tasks_dir)]
    argv += ["--tokenizer", str(tokenizer), "--num-fewshot", str(FEWSHOT), "--out", str(out), "--log-samples"]
    assert main([*argv, "--device", "cpu", *extra]) == 0
    return load(out)


def lls(sample: dict) -> list[float]:
    """A logged sample's log-likelihood per choice."""
    return [float(x[0]) for x in sample["filtered_resps"]]


def load(out: Path) -> dict:
    return read_samples(out, TASKS, lls)


def hf_eval(ckpt: Path, tokenizer: Path, tasks_dir: Path) -> dict:
    return lm_eval_hf(ckpt, tokenizer, tasks_dir, TASKS, FEWSHOT, lls)


def assert_same_scores(a: dict, b: dict) -> None:
    assert set(a["samples"]) == set(b["samples"]) == set(TASKS)
    for task in TASKS:
        for metric in ("acc", "acc_norm", "f1"):
            if metric in b["tasks"][task]:
                assert a["tasks"][task][metric] == pytest.approx(b["tasks"][task][metric], abs=1e-12), (task, metric)
        assert set(a["samples"][task]) == set(b["samples"][task])
        for doc, lls in b["samples"][task].items():
            assert len(a["samples"][task][doc]) == len(lls) >= 2
            worst = max(abs(x - y) for x, y in zip(a["samples"][task][doc], lls, strict=True))
            assert worst < TOL, f"{task} doc {doc}: log-likelihoods differ by {worst}"


@pytest.fixture(scope="module")
def reference(plain_ckpt, tokenizer_dir, tasks_dir):
    return hf_eval(plain_ckpt, tokenizer_dir, tasks_dir)


@pytest.fixture(scope="module")
def ours(plain_ckpt, tokenizer_dir, tasks_dir, tmp_path_factory):
    return motif_eval(plain_ckpt, tokenizer_dir, tasks_dir, tmp_path_factory.mktemp("plain"))


def test_motif_eval_matches_lm_eval_hf_on_a_plain_llama(ours, reference, task_names):
    assert task_names == TASKS
    assert_same_scores(ours, reference)
    # The scores are not degenerate: some choices win, some lose, log-likelihoods differ between choices.
    assert any(len(set(lls)) > 1 for lls in ours["samples"]["tiny_kmmlu"].values())
    for task in TASKS:
        assert 0.0 <= ours["tasks"][task]["acc"] <= 1.0


@pytest.mark.parametrize("kind", ["width", "depth"])
def test_masked_checkpoint_at_m0_scores_as_its_source(kind, masked_ckpts, ours, tokenizer_dir, tasks_dir, tmp_path):
    from motif.model.checkpoint import read_args

    args = read_args(masked_ckpts[kind])
    assert args.growth is not None and args.growth.mask == 0.0, "the grown checkpoint should carry masks at 0"
    grown = motif_eval(masked_ckpts[kind], tokenizer_dir, tasks_dir, tmp_path)
    assert_same_scores(grown, ours)


def test_split_across_two_devices_scores_the_same(masked_ckpts, tokenizer_dir, tasks_dir, tmp_path):
    """The blocks on two 'devices' (both the CPU here): hand-offs through the hooks change nothing."""
    single = motif_eval(masked_ckpts["depth"], tokenizer_dir, tasks_dir, tmp_path / "one")
    split = motif_eval(masked_ckpts["depth"], tokenizer_dir, tasks_dir, tmp_path / "two", "--device", "cpu,cpu")
    assert_same_scores(split, single)
