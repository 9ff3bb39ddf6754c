"""A real 3-proxy sweep, end to end in local mode: `motif mix sweep` trains three tiny proxies (from
scratch, 40 steps, in parallel processes) at Korean shares 0.1 / 0.5 / 0.9, the trainer scores the
held-out sets every 10 steps, and `motif mix fit` reads them, fits and chooses.

Sized to hold robustly and run in about a minute on two cores: a 2-layer, 64-wide Llama learns the
two scripts' unigram and bigram statistics in 40 steps, so the language it saw nine times more of
is clearly the one it predicts better (more Korean: lower Korean loss, higher English loss).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import PYTHON, subprocess_env, tiny_stage, write_doc

VOCAB = 384


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from motif.data.corpus import documents, write_corpus
    from motif.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("mix")
    write_corpus(root / "data", docs_per_language=300, seed=1)
    train_bpe(documents("ko", 300, 1) + documents("en", 300, 1), VOCAB, root / "data" / "tokenizer")
    for lang in ("ko", "en"):
        lines = [json.dumps({"text": d}, ensure_ascii=False) for d in documents(lang, 40, seed=7)]
        (root / "data" / "heldout").mkdir(exist_ok=True)
        (root / "data" / "heldout" / f"{lang}.jsonl").write_text("\n".join(lines) + "\n")
    doc = tiny_stage()
    doc["motif"]["train"]["deterministic"] = True
    write_doc(root / "stage.yaml", doc)
    return root


def _motif(workdir, *args, timeout=300):
    return subprocess.run(
        [PYTHON, "-m", "motif", "mix", *args],
        cwd=workdir,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def swept(workdir):
    r = _motif(workdir, "sweep", "stage.yaml", "--ko", "0.1,0.5,0.9", "--steps", "40", "--local", "--quiet")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return workdir / "mix" / "t-mix"


@pytest.mark.slow
def test_three_proxies_train_in_parallel_and_their_losses_move_the_right_way(workdir, swept):
    sweep = swept
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert [p["status"] for p in manifest["proxies"]] == ["done"] * 3

    # Katib's result format, one line per proxy: objective = Korean held-out bits per byte.
    results = {}
    for p in manifest["proxies"]:
        (line,) = (sweep / p["name"] / "result.json").read_text().splitlines()
        results[p["name"]] = json.loads(line)
        assert results[p["name"]]["objective"] == results[p["name"]]["heldout_bpb_ko"]

    # From scratch there is no start checkpoint to keep English at: the default rule says so.
    r = _motif(workdir, "fit", str(sweep))
    assert r.returncode == 2 and "no start-checkpoint loss for en" in r.stderr, r.stderr
    r = _motif(workdir, "fit", str(sweep), "--rule", "weighted", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    fit = json.loads(r.stdout)
    by_share = sorted(fit["proxies"], key=lambda p: p["ko_share"])
    ko = [p["heldout"]["ko"] for p in by_share]
    en = [p["heldout"]["en"] for p in by_share]
    assert ko[0] > ko[1] > ko[2], ko  # more Korean, lower Korean loss
    assert en[0] < en[1] < en[2], en  # and higher English loss
    assert ko[0] - ko[2] > 0.05 and en[2] - en[0] > 0.05  # well beyond noise
    for p in by_share:
        assert p["steps"][-4:] == [10, 20, 30, 40]  # scored at several points of each run, not only the end
        assert float(results[p["name"]]["heldout_bpb_en"]) == pytest.approx(p["heldout"]["en"], abs=1e-5)
    assert 0.1 <= fit["chosen"]["ko_share"] <= 0.9
    assert (sweep / "mix.png").stat().st_size > 30_000

    # A second run of the same sweep keeps the finished proxies (nothing retrained).
    mtimes = {p["name"]: (sweep / p["name"] / "metrics.jsonl").stat().st_mtime_ns for p in manifest["proxies"]}
    r = _motif(workdir, "sweep", "stage.yaml", "--ko", "0.1,0.5,0.9", "--steps", "40", "--local", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert {n: (sweep / n / "metrics.jsonl").stat().st_mtime_ns for n in mtimes} == mtimes


@pytest.mark.slow
def test_the_start_checkpoint_is_scored_like_the_trainer_scores_it(workdir, swept, tmp_path, monkeypatch):
    """The constrained rule's reference when the proxies did not record their start: the fit scores
    the start checkpoint with the same held-out scorer, once, into baseline.json. Scored here on the
    0.5 proxy's final model, it must equal what that proxy's trainer recorded at its last step."""
    import shutil

    from motif.mix.baseline import measure
    from motif.mix.sweep import read_manifest

    sweep = read_manifest(swept)
    sweep.start_checkpoint = "mix/t-mix/t-mix-mix-ko50/final"
    other = tmp_path / "sweep"
    other.mkdir()
    shutil.copy(swept / sweep.proxies[0].file, other)
    monkeypatch.chdir(tmp_path)  # measure() resolves the stage's paths against the sweep's working dir
    scores = measure(other, sweep)
    records = [json.loads(line) for line in (swept / "t-mix-mix-ko50" / "metrics.jsonl").read_text().splitlines()]
    (last,) = [
        r["motif_heldout_bits_per_byte"] for r in records if r.get("step") == 40 and "motif_heldout_bits_per_byte" in r
    ]
    assert scores == pytest.approx(last, abs=1e-4)
    assert json.loads((other / "baseline.json").read_text()) == {
        "checkpoint": sweep.start_checkpoint,
        "heldout": scores,
    }
    assert measure(other, sweep) == scores  # kept: not scored twice
