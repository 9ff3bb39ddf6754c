"""Generative evaluation: `motif eval` writes what lm-eval's own `hf` model writes, on every kind of checkpoint.

The task is KMMLU direct's (the paper's metric: the model writes the answer letter, exact match),
from lm-eval's packaged YAML with a few local documents. transformers' `generate` is the
independent reference: the same per-sample generations, character for character, and the same
scores. A checkpoint grown by MSG at m = 0 (width, or depth with blended blocks) generates exactly
what its source generates. The decoder's stops (stop strings, end-of-text, length) and its cache
are checked directly on the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from motif.cli import main

from .conftest import lm_eval_hf, read_samples

TASKS = ("tiny_kmmlu_direct", "tiny_kmmlu_direct_stops")  # written by conftest.write_tasks
FEWSHOT = 2


def generated(sample: dict) -> tuple:
    """A logged sample's generation, its filtered form and its exact-match score."""
    return sample["resps"], sample["filtered_resps"], sample["exact_match"]


def motif_eval(ckpt: Path, tokenizer: Path, tasks_dir: Path, out: Path, *extra: str) -> dict:
    argv = ["eval", str(ckpt), "--tasks", ",".join(TASKS), "--include-path", str(tasks_dir), "--device", "cpu"]
    argv += ["--tokenizer", str(tokenizer), "--num-fewshot", str(FEWSHOT), "--out", str(out), "--log-samples"]
    assert main([*argv, *extra]) == 0
    return read_samples(out, TASKS, generated)


def hf_eval(ckpt: Path, tokenizer: Path, tasks_dir: Path) -> dict:
    return lm_eval_hf(ckpt, tokenizer, tasks_dir, TASKS, FEWSHOT, generated)


@pytest.fixture(scope="module")
def ours(plain_ckpt, tokenizer_dir, tasks_dir, tmp_path_factory):
    return motif_eval(plain_ckpt, tokenizer_dir, tasks_dir, tmp_path_factory.mktemp("gen-plain"))


def test_generations_and_scores_match_lm_eval_hf_on_a_plain_llama(ours, plain_ckpt, tokenizer_dir, tasks_dir):
    reference = hf_eval(plain_ckpt, tokenizer_dir, tasks_dir)
    for task in TASKS:
        assert ours["samples"][task] == reference["samples"][task]
        assert ours["tasks"][task]["exact_match"] == reference["tasks"][task]["exact_match"]
    generations = [r[0][0][0] for r in ours["samples"]["tiny_kmmlu_direct"].values()]
    assert len(set(generations)) > 1, "the generations differ between prompts (not a constant)"
    stopped = [r[0][0][0] for r in ours["samples"]["tiny_kmmlu_direct_stops"].values()]
    assert all("e" not in g and "지" not in g for g in stopped), "cut at the task's stop strings"
    assert any(len(g) < len(full) for g, full in zip(stopped, generations, strict=True))


@pytest.mark.parametrize("kind", ["width", "depth"])
def test_a_masked_checkpoint_at_m0_generates_what_its_source_generates(
    kind, masked_ckpts, ours, tokenizer_dir, tasks_dir, tmp_path
):
    grown = motif_eval(masked_ckpts[kind], tokenizer_dir, tasks_dir, tmp_path)
    assert grown["samples"] == ours["samples"]
    assert grown["tasks"] == ours["tasks"]


def test_a_checkpoint_split_across_two_devices_generates_what_it_generates_whole(
    masked_ckpts, ours, tokenizer_dir, tasks_dir, tmp_path
):
    """Blocks on two 'devices' (both the CPU here), each holding its own part of the KV cache."""
    split = motif_eval(masked_ckpts["depth"], tokenizer_dir, tasks_dir, tmp_path, "--device", "cpu,cpu")
    assert split["samples"] == ours["samples"]
    assert split["tasks"] == ours["tasks"]


# ---- the decoder itself ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_tokenizer(plain_ckpt, tokenizer_dir):
    from transformers import AutoTokenizer

    import motif

    return motif.load(plain_ckpt), AutoTokenizer.from_pretrained(str(tokenizer_dir))


def prompt_ids(tok, text: str = "오늘 고양이는 빨간 사과를 봅니다. The cat") -> list[int]:
    return tok(text).input_ids


def test_the_cache_gives_the_tokens_of_rerunning_the_prefix(model_and_tokenizer):
    from motif.eval.decode import complete

    model, tok = model_and_tokenizer
    with_cache = complete(model, prompt_ids(tok), 24)
    without = complete(model, prompt_ids(tok), 24, cache=False)
    assert with_cache == without and len(with_cache) == 24


def test_greedy_is_transformers_greedy(model_and_tokenizer, plain_ckpt):
    import torch
    from transformers import LlamaForCausalLM

    from motif.eval.decode import complete

    model, tok = model_and_tokenizer
    hf = LlamaForCausalLM.from_pretrained(str(plain_ckpt), dtype=torch.float32).eval()
    ids = prompt_ids(tok)
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert complete(model, ids, 20) == ref[0, len(ids) :].tolist()


def test_stop_strings_end_the_sequence_at_the_token_that_completes_one(model_and_tokenizer):
    from motif.eval.decode import Stops, complete

    model, tok = model_and_tokenizer
    decode = lambda ids: tok.decode(ids, skip_special_tokens=False)  # noqa: E731
    full = complete(model, prompt_ids(tok), 30)
    # A stop string that first appears, whole, only once token 8 is out.
    stop = next(decode(full[:n])[-2:] for n in range(8, 30) if decode(full[:n])[-2:] not in decode(full[: n - 1]))
    n = next(k for k in range(1, 31) if stop in decode(full[:k]))
    stopped = complete(model, prompt_ids(tok), 30, stops=Stops(texts=(stop,), decode=decode))
    assert stopped == full[:n] and n < 30
    assert (
        complete(model, prompt_ids(tok), 30, stops=Stops(ids=frozenset({full[4]}))) == full[: full.index(full[4]) + 1]
    )
    assert complete(model, prompt_ids(tok), 3) == full[:3]
    assert complete(model, prompt_ids(tok), 0) == []


def test_sampling_is_seeded(model_and_tokenizer):
    import torch

    from motif.eval.decode import complete

    model, tok = model_and_tokenizer

    def sample(seed: int) -> list[int]:
        return complete(model, prompt_ids(tok), 16, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_unsupported_generation_settings_are_refused_by_name_before_loading(tasks_dir, tmp_path):
    from motif.eval.tasks import TaskError, plan_tasks, sampling_temperature

    assert sampling_temperature({"until": ["."], "do_sample": False, "temperature": 0.0, "top_p": 1.0}) == 0.0
    assert sampling_temperature({"do_sample": True, "temperature": 0.7}) == 0.7
    config = json.loads((tasks_dir / "tiny_kmmlu_direct.yaml").read_text())
    config["generation_kwargs"] = {"until": ["."], "num_beams": 4}
    (tmp_path / "beams.yaml").write_text(json.dumps({**config, "task": "tiny_beams"}))
    with pytest.raises(TaskError, match="task tiny_beams: generation_kwargs: num_beams not supported"):
        plan_tasks(["tiny_beams"], [tmp_path])
