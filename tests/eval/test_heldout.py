"""Held-out bits per byte: the same number lm-eval computes, every token once, and the same on 1 and 2 ranks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from motif.config import HeldoutSource, parse_stage
from motif.eval.heldout import HeldoutSet, split_windows
from motif.model.checkpoint import load

ROOT = Path(__file__).resolve().parents[2]
SEQ_LEN = 24


def identity(_: torch.Tensor) -> None:
    return None


@pytest.fixture(scope="module")
def heldout_files(workdir) -> dict[str, Path]:
    from motif.data.corpus import write_corpus

    # Another seed than the training corpus: the same distribution, other documents.
    return write_corpus(workdir / "heldout", docs_per_language=7, seed=11)


def sources(files: dict[str, Path]) -> list[HeldoutSource]:
    return [HeldoutSource(f"{lang}-heldout", lang, str(path)) for lang, path in files.items()]


def test_windows_predict_every_token_once():
    ids = [0, *range(10, 60)]  # the prefix (BOS) + 50 text tokens
    windows = split_windows(ids, 16, language=1)
    scored = [w.targets[w.scored_from :] for w in windows]
    assert [len(t) for t in scored] == [16, 16, 16, 2]
    assert [t for part in scored for t in part] == ids[1:]
    for w in windows:
        assert len(w.tokens) == len(w.targets) <= 16
        assert w.tokens[1:] == w.targets[:-1]  # each position predicts the next token
    # The last, short window still sees a full window of context before its 2 predicted tokens.
    assert len(windows[-1].tokens) == 16 and windows[-1].scored_from == 14
    assert split_windows([0], 16, 0) == []


def test_matches_lm_eval_bits_per_byte(plain_ckpt, tokenizer_dir, heldout_files, tmp_path):
    """lm-eval's loglikelihood_rolling + bits_per_byte on the same texts, with the same window length."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import motif.eval.lm  # noqa: F401  (registers the motif model)

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for lang, path in heldout_files.items():
        (tasks / f"rolling_{lang}.yaml").write_text(
            yaml.safe_dump(
                {
                    "task": f"rolling_{lang}",
                    "dataset_path": "json",
                    "dataset_kwargs": {"data_files": {"test": str(path)}},
                    "test_split": "test",
                    "output_type": "loglikelihood_rolling",
                    "doc_to_text": "",
                    "doc_to_target": "{{text}}",
                    "metric_list": [{"metric": "bits_per_byte", "aggregation": "bits_per_byte"}],
                }
            )
        )
    raw = lm_eval.simple_evaluate(
        model="motif",
        model_args=f"pretrained={plain_ckpt},tokenizer={tokenizer_dir},max_length={SEQ_LEN},devices=cpu",
        tasks=["rolling_ko", "rolling_en"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        batch_size=4,
        log_samples=False,
    )
    theirs = {lang: raw["results"][f"rolling_{lang}"]["bits_per_byte,none"] for lang in heldout_files}
    model = load(plain_ckpt)
    heldout = HeldoutSet.from_sources(sources(heldout_files), tokenizer_dir, SEQ_LEN, batch_size=3)
    assert len(heldout.windows) > 20, "the texts should need several windows each"
    ours = heldout.score(model, "cpu", identity)
    assert set(ours) == {"ko", "en"}
    for lang in ours:
        assert ours[lang] == pytest.approx(theirs[lang], rel=1e-5), lang
        assert 0.1 < ours[lang] < 20


def test_bytes_are_the_texts_utf8_bytes(tokenizer_dir, heldout_files):
    heldout = HeldoutSet.from_sources(sources(heldout_files), tokenizer_dir, SEQ_LEN, batch_size=4)
    for lang, path in heldout_files.items():
        texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
        assert heldout.bytes_per_language[heldout.languages.index(lang)] == sum(len(t.encode()) for t in texts)
    # Korean is ~3 bytes per character in UTF-8: the byte count, not the characters, is the denominator.
    ko, en = (heldout.bytes_per_language[heldout.languages.index(x)] for x in ("ko", "en"))
    assert ko > en


def test_from_stage(tokenizer_dir, heldout_files, workdir):
    section = {
        "name": "s",
        "output": "out",
        "model": {
            "vocab_size": 384,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        "data": {
            "tokenizer": str(tokenizer_dir),
            "seq_len": SEQ_LEN,
            "sources": [{"name": "ko", "language": "ko", "weight": 1.0, "path": str(workdir / "data" / "ko.jsonl")}],
        },
        "optim": {"lr": 1e-3},
        "train": {"max_steps": 10, "micro_batch_size": 5},
        "checkpoint": {"dir": "ck"},
    }
    assert HeldoutSet.from_stage(parse_stage(section), tokenizer_dir) is None
    section["eval"] = {"heldout": [{"name": "en-h", "language": "en", "path": str(heldout_files["en"])}]}
    heldout = HeldoutSet.from_stage(parse_stage(section), tokenizer_dir, rank=1, world=2)
    assert heldout.languages == ["en"] and heldout.seq_len == SEQ_LEN and heldout.batch_size == 5
    assert heldout.my_windows == heldout.windows[1::2]


@pytest.mark.slow
def test_two_sharded_ranks_score_as_one_process(plain_ckpt, tokenizer_dir, heldout_files, tmp_path):
    """2 gloo processes, FSDP2-sharded weights (forward is a collective), uneven shares: same scores."""
    one = HeldoutSet.from_sources(sources(heldout_files), tokenizer_dir, SEQ_LEN, batch_size=1)
    n = len(one.windows)
    # A batch size at which rank 1 has fewer windows and runs at least one all-padding batch.
    batch = next(b for b in range(2, n) if n % 2 and math.ceil((n // 2) / b) < math.ceil(math.ceil(n / 2) / b))
    expected = HeldoutSet.from_sources(sources(heldout_files), tokenizer_dir, SEQ_LEN, batch).score(
        load(plain_ckpt), "cpu", identity
    )
    out = tmp_path / "ranks.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(ROOT / "tests/eval/heldout_ranks.py"), str(plain_ckpt), str(tokenizer_dir), str(SEQ_LEN), str(batch)]
    cmd += [str(out), str(heldout_files["ko"]), str(heldout_files["en"])]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    ranks = result["ranks"]
    assert ranks[0]["windows"] > ranks[1]["windows"], ranks  # uneven shares...
    assert ranks[0]["calls"] == ranks[1]["calls"] == result["batches_per_rank"], ranks  # ...equal collective calls
    assert sum(r["windows"] for r in ranks) == n
    for lang, value in expected.items():
        assert result["scores"][lang] == pytest.approx(value, rel=1e-6), lang
