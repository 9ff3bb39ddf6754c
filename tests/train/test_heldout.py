"""Held-out bits per byte in training: scored at the stage's start, every eval.every_steps and at its end,
in the JSONL log beside the step records, on every engine's forward."""

import json

import pytest

from motif.data.corpus import documents
from motif.metrics.jsonl import read

from .conftest import motif_train, run_in_process, stage_section, write_stage


def _with_heldout(workdir, name, **overrides):
    for lang in ("ko", "en"):
        with (workdir / f"heldout-{lang}.jsonl").open("w") as f:
            for text in documents(lang, 20, seed=99):  # another seed than the training corpus
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    heldout = [{"name": f"{lang}-held", "language": lang, "path": f"heldout-{lang}.jsonl"} for lang in ("ko", "en")]
    return stage_section(name, train={"max_steps": 6}, eval={"every_steps": 2, "heldout": heldout}, **overrides)


def _scores(workdir, name):
    return {
        r["step"]: r["motif_heldout_bits_per_byte"]
        for r in read(workdir / "ck" / name / "metrics.jsonl")
        if "motif_heldout_bits_per_byte" in r
    }


def test_heldout_bits_per_byte_are_logged_at_start_interval_and_end(workdir, monkeypatch):
    assert run_in_process(_with_heldout(workdir, "held"), workdir, monkeypatch) == 0
    scores = _scores(workdir, "held")
    assert sorted(scores) == [0, 2, 4, 6]
    assert all(set(s) == {"ko", "en"} and all(0 < v < 20 for v in s.values()) for s in scores.values())
    assert scores[6]["ko"] < scores[0]["ko"] and scores[6]["en"] < scores[0]["en"]  # training helps both


@pytest.mark.slow
def test_two_fsdp_ranks_score_what_one_process_scores(workdir, monkeypatch):
    one = _with_heldout(workdir, "held1", parallel={"engine": "fsdp"})
    two = _with_heldout(workdir, "held2", parallel={"engine": "fsdp", "procs_per_node": 2})
    for section in (one, two):
        section["train"] = {**section["train"], "max_steps": 2}
        done = motif_train(workdir, write_stage(workdir, section), nproc=section["parallel"]["procs_per_node"])
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = _scores(workdir, "held1"), _scores(workdir, "held2")
    assert a[0] == pytest.approx(b[0], rel=1e-6)  # the same start weights, scored in halves by two ranks
