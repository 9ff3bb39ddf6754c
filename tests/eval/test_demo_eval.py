"""The demo's evaluation: its tiny KMMLU- and KoBEST-format tasks, held-out sets, and the score table per stage.

The stage files are the tiny recipe's own (jobs/tiny); the tiny test checkpoints stand in for the
trained stages, so this runs in seconds (`make demo` trains them for real).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from motif.config import load_stage
from motif.eval import demo

ROOT = Path(__file__).resolve().parents[2]


def test_tasks_are_well_formed(tmp_path):
    tasks = demo.write_tasks(tmp_path)
    assert sorted(p.stem for p in tasks.glob("*.yaml")) == sorted(demo.TASKS)
    for name in demo.TASKS:
        config = json.loads((tasks / f"{name}.yaml").read_text())
        assert Path(config["include"]).is_file(), "the packaged lm-eval task file is included, not copied"
        for file in config["dataset_kwargs"]["data_files"].values():
            assert Path(file).is_absolute() and Path(file).is_file()
    kmmlu = [json.loads(x) for x in (tmp_path / "tasks/data/demo_kmmlu/test.jsonl").read_text().splitlines()]
    assert len(kmmlu) == demo.TEST_DOCS and {r["answer"] for r in kmmlu} == {1, 2, 3, 4}
    mmlu = [json.loads(x) for x in (tmp_path / "tasks/data/demo_mmlu/test.jsonl").read_text().splitlines()]
    assert {r["answer"] for r in mmlu} == {0, 1, 2, 3} and all(len(r["choices"]) == 4 for r in mmlu)
    copa = [json.loads(x) for x in (tmp_path / "tasks/data/demo_kobest_copa/test.jsonl").read_text().splitlines()]
    assert [r["label"] for r in copa].count(0) == demo.TEST_DOCS // 2  # chance is 0.5
    before = {p: p.stat().st_mtime_ns for p in tasks.rglob("*")}
    assert demo.write_tasks(tmp_path) == tasks
    assert {p: p.stat().st_mtime_ns for p in tasks.rglob("*")} == before, "unchanged files are not rewritten"


def test_heldout_sets_are_not_the_training_documents(tmp_path):
    from motif.data.corpus import documents

    demo.prepare(tmp_path)
    for lang in ("ko", "en"):
        held = {json.loads(x)["text"] for x in (tmp_path / "data/heldout" / f"{lang}.jsonl").read_text().splitlines()}
        assert len(held) == demo.HELDOUT_DOCS
        assert not held & set(documents(lang, 3000)), "a held-out document is also a training document"


@pytest.mark.slow  # three stages evaluated on five tasks: ~40 s on 2 cores
def test_report_prints_a_score_table_per_stage(plain_ckpt, masked_ckpts, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    stage_files = sorted((ROOT / "jobs" / "tiny").glob("*.yaml"))
    stand_ins = [plain_ckpt, masked_ckpts["depth"], masked_ckpts["width"]]
    for file, ckpt in zip(stage_files, stand_ins, strict=True):
        shutil.copytree(ckpt, out / load_stage(file).output)
    shutil.copytree(tokenizer_dir, out / "data" / "tokenizer")
    summaries = demo.report(out, stage_files)
    printed = capsys.readouterr().out
    assert [s["stage"] for s in summaries] == ["tiny-s0-base", "tiny-s1-depth", "tiny-s2-width"]
    table = printed.split("== evaluation")[1]
    header = next(line for line in table.splitlines() if line.startswith("stage"))
    for column in (
        "held-out en bits/byte",
        "held-out ko bits/byte",
        "demo_kmmlu acc",
        "demo_kobest_copa acc",
        "demo_mmlu acc",
        "demo_kmmlu_direct exact_match",
    ):
        assert column in header
    for s in summaries:
        assert any(line.startswith(s["stage"]) for line in table.splitlines())
        assert set(s["heldout"]) == {"ko", "en"} and set(s["tasks"]) == set(demo.TASKS)
    # Masks at 0 preserve the function: the grown stand-ins score exactly as the plain one.
    assert summaries[1]["heldout"] == pytest.approx(summaries[0]["heldout"], rel=1e-5)
    assert summaries[2]["tasks"]["demo_kobest_copa"] == summaries[0]["tasks"]["demo_kobest_copa"]
    assert (out / "checkpoints/tiny-s0-base/final/eval/summary.json").is_file()
    # The generative task: the same generations from a checkpoint grown at m = 0 as from its source.
    assert summaries[2]["tasks"]["demo_kmmlu_direct"] == summaries[0]["tasks"]["demo_kmmlu_direct"]


def test_the_direct_task_is_kmmlu_directs_prompt_and_stops_with_a_short_max_gen_toks(tmp_path):
    tasks = demo.write_tasks(tmp_path)
    config = json.loads((tasks / "demo_kmmlu_direct.yaml").read_text())
    assert config["include"].endswith("kmmlu/direct/_direct_kmmlu_yaml")
    assert config["generation_kwargs"] == {
        "until": ["Q:", "\n\n", "</s>", "."],
        "do_sample": False,
        "temperature": 0.0,
        "max_gen_toks": demo.DIRECT_MAX_GEN_TOKS,
    }


def test_continuations_per_checkpoint_show_growth_preserving_and_training_changing_them(
    plain_ckpt, masked_ckpts, make_ckpt, tokenizer_dir, tmp_path, capsys
):
    out = tmp_path / "demo"
    stage_files = sorted((ROOT / "jobs" / "tiny").glob("*.yaml"))
    stages = [(f, load_stage(f)) for f in stage_files]
    s0, s1, s2 = (stage for _, stage in stages)
    shutil.copytree(plain_ckpt, out / s0.output)
    shutil.copytree(masked_ckpts["depth"], out / s1.growth.output)  # grown at m = 0: the same function
    make_ckpt(out / s1.output, seed=11)  # "trained": another function
    shutil.copytree(tokenizer_dir, out / "data" / "tokenizer")
    rows = demo.print_continuations(out, stages)
    printed = capsys.readouterr().out
    assert [r["checkpoint"] for r in rows] == ["tiny-s0-base final", "tiny-s1-depth grown", "tiny-s1-depth final"]
    assert [r["same_as_previous"] for r in rows] == [False, True, False]
    assert rows[1]["texts"] == rows[0]["texts"] and rows[2]["texts"] != rows[1]["texts"]
    assert set(rows[0]["texts"]) == {"ko", "en"} and all(rows[0]["texts"].values())
    assert printed.count("growth preserved it") == 1
    assert f"ko: {demo.PROMPTS['ko']} -> " in printed and f"en: {demo.PROMPTS['en']} -> " in printed
