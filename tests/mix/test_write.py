"""`motif mix fit --write STAGE_FILE`: only the weights change, every other byte (comments, flow
mappings, chart keys) stays; a refused write leaves the file and the sweep untouched."""

from __future__ import annotations

import shutil

import pytest

from motif.mix.stagefile import set_weights

from .conftest import ROOT, make_sweep, snapshot

KO = (0.8, 1.2, -3.0)
EN = (0.9, 0.15, 2.5)
BASELINE = "ko=2.0,en=1.55"
BLOCK = """\
# a stage written in block style, with comments on the weights
motif:
  name: s-block
  model: {vocab_size: 384, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
          num_attention_heads: 4, num_key_value_heads: 2}
  output: out/s          # the final checkpoint
  data:
    tokenizer: data/tokenizer
    seq_len: 32
    sources:
      - name: ko-news
        language: ko
        weight: 0.25     # Korean news
        path: data/ko-news.jsonl
      - name: ko-wiki
        language: ko
        weight: 0.25
        path: data/ko.jsonl
      - name: en-wiki    # English
        language: en
        weight: 5.0e-1
        path: data/en.jsonl
  optim: {lr: 3.0e-3}
  train: {max_steps: 8, micro_batch_size: 4, precision: fp32}
  checkpoint: {dir: ck/s}
image: {repository: localhost/motif-cpu, tag: 0.1.0}   # chart keys stay too
"""


def test_write_changes_only_the_weights_of_a_recipe_stage_file(tmp_path, motif_cli):
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": EN}, noise=0.002, seed=1)
    stage = tmp_path / "stage1-depth.yaml"
    shutil.copy(ROOT / "jobs" / "tiny" / "stage1-depth.yaml", stage)
    old = stage.read_text()
    code, out, err = motif_cli("mix", "fit", str(sweep), "--baseline", BASELINE, "--write", str(stage))
    assert code == 0, err
    chosen = float(
        next(line for line in out.splitlines() if line.startswith("chosen: ")).split("ko share ")[1].split()[0]
    )
    expected = old.replace(
        "{name: ko-wiki, language: ko, weight: 0.5,", f"{{name: ko-wiki, language: ko, weight: {round(chosen, 6)!r},"
    ).replace(
        "{name: en-wiki, language: en, weight: 0.5,",
        f"{{name: en-wiki, language: en, weight: {round(1 - chosen, 6)!r},",
    )
    assert stage.read_text() == expected and expected != old
    # The diff is printed: the two weight lines, nothing else.
    minus = [line for line in out.splitlines() if line.startswith("-") and not line.startswith("---")]
    plus = [line for line in out.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert len(minus) == len(plus) == 2 and all("weight: 0.5" in line for line in minus)


def test_write_keeps_comments_and_the_proportions_inside_a_language(tmp_path):
    new = set_weights(BLOCK, {"ko-news": 0.3, "ko-wiki": 0.3, "en-wiki": 0.4}, "block.yaml")
    assert new == (
        BLOCK.replace("weight: 0.25     # Korean news", "weight: 0.3     # Korean news")
        .replace("weight: 0.25\n", "weight: 0.3\n")
        .replace("weight: 5.0e-1", "weight: 0.4")
    )


def test_the_grid_choice_splits_the_korean_share_among_korean_sources(tmp_path, motif_cli):
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": EN})
    stage = tmp_path / "block.yaml"
    stage.write_text(BLOCK)
    code, out, err = motif_cli("mix", "fit", str(sweep), "--rule", "weighted", "--write", str(stage), "--json")
    assert code == 0, err
    import json

    import yaml

    share = json.loads(out)["chosen"]["ko_share"]
    sources = {s["name"]: s["weight"] for s in yaml.safe_load(stage.read_text())["motif"]["data"]["sources"]}
    assert sources["ko-news"] == pytest.approx(share / 2, abs=1e-6) and sources["ko-wiki"] == sources["ko-news"]
    assert sources["en-wiki"] == pytest.approx(1 - share, abs=1e-6)
    assert "# Korean news" in stage.read_text() and "--- " in err  # the diff goes to stderr with --json


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("weight: 5.0e-1", "weight: 0.6"), "motif.data.sources: weights must sum to 1, got 1.1"),
        (lambda t: t.replace("language: ko", "language: ja"), "motif.data.sources: no source with language: ko"),
        (lambda t: t.replace("seq_len: 32", "seq_len: many"), "motif.data.seq_len: expected an integer"),
    ],
    ids=["weights-sum", "no-korean", "invalid-stage"],
)
def test_a_refused_write_is_one_line_exit_2_and_writes_nothing(tmp_path, motif_cli, edit, expected):
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": EN})
    stage = tmp_path / "block.yaml"
    stage.write_text(edit(BLOCK))
    before = snapshot(tmp_path)
    code, out, err = motif_cli("mix", "fit", str(sweep), "--baseline", BASELINE, "--write", str(stage))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and expected in err and str(stage) in err, err
    assert snapshot(tmp_path) == before  # no plot, no fit.json, the stage file as it was
