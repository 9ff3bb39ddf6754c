"""`motif mix fit` on sweep directories whose proxies follow a known mixing law: the choice, the
rules' boundaries, the table, the plot, and every refusal (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from .conftest import make_sweep, snapshot

KO = (0.8, 1.2, -3.0)
EN = (0.9, 0.15, 2.5)
FLAT = (1.2, 0.0, 0.0)
BASELINE = "ko=2.0,en=1.55"  # English may reach 1.56 (epsilon 0.01): the bound binds at x = 0.5926
OPTIMUM = math.log((1.56 - EN[0]) / EN[1]) / EN[2]


def _fit(motif_cli, sweep_dir, *args):
    code, out, err = motif_cli("mix", "fit", str(sweep_dir), *args)
    return code, out, err


def test_fit_picks_the_constrained_optimum_and_reports_it(tmp_path, motif_cli):
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": EN}, noise=0.002, seed=1)
    code, out, err = _fit(motif_cli, sweep, "--baseline", BASELINE, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["feasible"] and not result["at_edge"]
    assert abs(result["chosen"]["ko_share"] - OPTIMUM) <= 0.02
    assert result["chosen"]["predicted"]["en"] <= 1.56
    assert sum(result["chosen"]["weights"].values()) == pytest.approx(1.0, abs=1e-6)
    fits = result["fits"]
    assert abs(fits["ko"]["c"] - KO[0]) <= 0.03 and abs(fits["ko"]["t"][0] - KO[2]) <= 0.25
    assert abs(fits["en"]["k"] - EN[1]) <= 0.03 and abs(fits["en"]["t"][0] - EN[2]) <= 0.25
    # Held-out error: each proxy predicted by the law fitted to the other four.
    assert len(fits["ko"]["loo_errors"]) == 5 and max(map(abs, fits["ko"]["loo_errors"])) < 0.05
    # The law is fitted at every scored step, the choice at the last one.
    assert [c["step"] for c in result["by_step"]] == [10, 20, 30, 40]
    png = sweep / "mix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000
    assert json.loads((sweep / "fit.json").read_text())["chosen"] == result["chosen"]


def test_fit_prints_the_table_and_the_choice(tmp_path, motif_cli):
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": EN}, noise=0.002)
    code, out, err = _fit(motif_cli, sweep, "--baseline", BASELINE)
    assert code == 0, err
    lines = out.splitlines()
    header = "proxy ko share steps ko bpb en bpb ko loo err en loo err"
    assert lines[0].split() == header.split()  # noqa: SIM905 - the header as the user reads it
    assert sum(line.startswith("t-s1-mix-ko") for line in lines) == 5
    assert any(line.startswith("L_ko(x) = ") and "leave-one-out" in line for line in lines)
    assert any(line.startswith("chosen ko share by step: step 10:") for line in lines)
    chosen = next(line for line in lines if line.startswith("chosen: "))
    assert "ko share 0.59" in chosen or "ko share 0.58" in chosen or "ko share 0.6 " in chosen, chosen


def test_flat_english_loss_picks_the_edge_of_the_sweep(tmp_path, motif_cli):
    """English never nears its bound: the rule only minimises Korean loss -> the largest share."""
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": FLAT})
    code, out, err = _fit(motif_cli, sweep, "--baseline", "en=1.2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["chosen"]["ko_share"] == pytest.approx(0.9) and result["at_edge"]


def test_flat_korean_loss_picks_the_other_boundary(tmp_path, motif_cli):
    """Korean loss does not depend on the mix: every share ties, the tie goes to the best English
    loss -> the smallest share, under both rules."""
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": FLAT, "en": EN})
    for args in (("--baseline", "en=2.0"), ("--rule", "weighted")):
        code, out, err = _fit(motif_cli, sweep, *args, "--json")
        assert code == 0, err
        assert json.loads(out)["chosen"]["ko_share"] == pytest.approx(0.1), args


def test_weighted_rule_minimises_the_weighted_sum(tmp_path, motif_cli):
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": EN})
    code, out, err = _fit(motif_cli, sweep, "--rule", "weighted", "--weights", "ko=0.5,en=0.5", "--json")
    assert code == 0, err
    x = np.linspace(0.1, 0.9, 8001)
    best = x[np.argmin(0.5 * (KO[0] + KO[1] * np.exp(KO[2] * x)) + 0.5 * (EN[0] + EN[1] * np.exp(EN[2] * x)))]
    assert abs(json.loads(out)["chosen"]["ko_share"] - best) <= 0.01


def test_no_feasible_mixture_is_reported_not_written(tmp_path, motif_cli):
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": EN})
    stage = tmp_path / "stage.yaml"
    from .conftest import tiny_stage, write_doc

    write_doc(stage, tiny_stage())
    before = stage.read_bytes()
    code, out, err = _fit(motif_cli, sweep, "--baseline", "en=0.5", "--write", str(stage))
    assert code == 1 and "NO MIXTURE MEETS THE BOUND" in out and "not written" in err
    assert stage.read_bytes() == before


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "two-proxies",
            "2 usable proxies at 2 mixtures; the mixing law has 3 parameters per language, so the fit needs at least 3",
        ),
        ("failed", "proxy t-s1-mix-ko50 failed (exit status 4"),
        ("unfinished", "proxy t-s1-mix-ko30 did not finish: last held-out record at step 20 of 40"),
        ("no-baseline", "--rule constrained: no start-checkpoint loss for en"),
        ("weights-sum", "--weights: weights must sum to 1, got 0.9"),
        ("weights-rule", "--weights: only with --rule weighted"),
        ("bad-baseline", "--baseline: 'en=-1': expected LANG=BPB with BPB > 0"),
        ("not-a-sweep", "no sweep.json (not a sweep directory written by `motif mix sweep`)"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, motif_cli, case, expected):
    sweep = tmp_path / "sweep"
    args = ["--baseline", BASELINE]
    if case == "two-proxies":
        make_sweep(sweep, {"ko": KO, "en": EN}, shares=(0.3, 0.7))
    elif case == "failed":
        make_sweep(sweep, {"ko": KO, "en": EN}, failed={"ko50": 4})
    elif case == "unfinished":
        make_sweep(sweep, {"ko": KO, "en": EN}, unfinished=("ko30",))
    elif case == "no-baseline":
        make_sweep(sweep, {"ko": KO, "en": EN}, start=None)
        args = []
    elif case == "weights-sum":
        make_sweep(sweep, {"ko": KO, "en": EN})
        args = ["--rule", "weighted", "--weights", "ko=0.5,en=0.4"]
    elif case == "weights-rule":
        make_sweep(sweep, {"ko": KO, "en": EN})
        args = ["--weights", "ko=0.5,en=0.5"]
    elif case == "bad-baseline":
        make_sweep(sweep, {"ko": KO, "en": EN})
        args = ["--baseline", "en=-1"]
    else:
        sweep.mkdir()
    before = snapshot(tmp_path)
    code, out, err = _fit(motif_cli, sweep, *args)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("motif mix: error: ") and expected in err, err
    assert "Traceback" not in err and out == ""
    assert snapshot(tmp_path) == before


def test_allow_missing_fits_without_the_failed_proxy(tmp_path, motif_cli):
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": EN}, noise=0.001, failed={"ko50": 4})
    code, out, err = _fit(motif_cli, sweep, "--baseline", BASELINE, "--allow-missing")
    assert code == 0, err
    assert out.splitlines()[0].startswith("left out: t-s1-mix-ko50 failed (exit status 4")
    code, out, err = _fit(motif_cli, sweep, "--baseline", BASELINE, "--allow-missing", "--json")
    result = json.loads(out)
    assert [p["name"] for p in result["proxies"]] == [
        "t-s1-mix-ko10",
        "t-s1-mix-ko30",
        "t-s1-mix-ko70",
        "t-s1-mix-ko90",
    ]
    assert result["missing"][0]["name"] == "t-s1-mix-ko50"
    assert abs(result["chosen"]["ko_share"] - OPTIMUM) <= 0.03
    # With only 3 left, leave-one-out would fit 3 parameters to 2 points: reported as unavailable.
    make_sweep(tmp_path / "three", {"ko": KO, "en": EN}, shares=(0.1, 0.5, 0.9, 0.7), failed={"ko70": 1})
    code, out, err = _fit(motif_cli, tmp_path / "three", "--baseline", BASELINE, "--allow-missing")
    assert code == 0, err
    assert "held-out error: n/a (needs one proxy more than the law's parameters)" in out


def test_the_proxies_step_0_records_are_the_start_checkpoints_loss(tmp_path, motif_cli):
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": EN}, start_record={"ko": 2.0, "en": 1.55})
    code, out, err = _fit(motif_cli, sweep, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["baseline"] == {"ko": 2.0, "en": 1.55} and result["bounds"] == {"en": pytest.approx(1.56)}
    assert abs(result["chosen"]["ko_share"] - OPTIMUM) <= 0.02
    assert [c["step"] for c in result["by_step"]] == [10, 20, 30, 40]  # step 0 is not a mixture's result
    assert not (sweep / "baseline.json").exists()  # nothing to score
    # From scratch, step 0 is a random initialisation: not a reference.
    scratch = tmp_path / "scratch"
    make_sweep(scratch, {"ko": KO, "en": EN}, start=None, start_record={"ko": 9.0, "en": 9.0})
    code, out, err = _fit(motif_cli, scratch)
    assert code == 2 and "no start-checkpoint loss for en" in err


def test_baseline_is_read_from_the_sweep(tmp_path, motif_cli):
    """The start checkpoint's held-out loss, once scored, is kept in baseline.json and reused."""
    sweep = tmp_path / "sweep"
    make_sweep(sweep, {"ko": KO, "en": EN})
    (sweep / "baseline.json").write_text(json.dumps({"checkpoint": "x", "heldout": {"ko": 2.0, "en": 1.55}}))
    code, out, err = _fit(motif_cli, sweep, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["baseline"] == {"ko": 2.0, "en": 1.55} and result["bounds"] == {"en": 1.56}


def test_dirichlet_sweep_over_three_sources(tmp_path, motif_cli):
    """RegMix's case: 12 proxies over three sources; the law (over all shares) and the regression
    are both fitted, the one with the smaller leave-one-out error chooses among simulated mixtures."""
    from motif.mix import mixtures
    from motif.mix.sweep import Proxy, Sweep, write_manifest

    sources = ["ko-wiki", "ko-news", "en-wiki"]
    centre = [0.4, 0.2, 0.4]
    rows = mixtures.dirichlet(centre, 12, seed=5)

    def truth(w):
        ko = 0.8 + 1.0 * np.exp(-3.0 * w[0] - 2.0 * w[1])
        en = 0.9 + 0.1 * np.exp(3.0 * (w[0] + w[1]))
        return {"ko": float(ko), "en": float(en)}

    sweep_dir = tmp_path / "sweep"
    proxies = []
    for i, w in enumerate(rows):
        p = Proxy(f"t-s1-mix-{i + 1:02d}", dict(zip(sources, w, strict=True)), w[0] + w[1], "done", 0)
        proxies.append(p)
        (sweep_dir / p.name).mkdir(parents=True)
        record = {"step": 40, "motif_heldout_bits_per_byte": truth(np.asarray(w))}
        (sweep_dir / p.name / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    sweep = Sweep(
        stage_file="t.yaml",
        stage="t-s1",
        mode="dirichlet",
        steps=40,
        runner="local",
        out=str(sweep_dir),
        workdir=str(tmp_path),
        sources=sources,
        languages={"ko-wiki": "ko", "ko-news": "ko", "en-wiki": "en"},
        stage_weights=dict(zip(sources, centre, strict=True)),
        start_checkpoint=None,
        proxies=proxies,
        centre=centre,
        centre_from="test",
    )
    write_manifest(sweep_dir, sweep)
    code, out, err = _fit(motif_cli, sweep_dir, "--rule", "weighted", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {f["model"] for f in result["fits"].values()} <= {"law", "regression"}
    chosen = result["chosen"]["weights"]
    assert sum(chosen.values()) == pytest.approx(1.0, abs=1e-6) and set(chosen) == set(sources)
    sims = mixtures.simulate(centre, 20000, seed=9)
    objective = [0.5 * sum(truth(w).values()) for w in sims]
    best = min(objective)
    got = 0.5 * sum(truth(np.asarray([chosen[s] for s in sources])).values())
    assert got - best < 0.02, (got, best)  # the averaged top mixtures land near the true optimum
    assert (sweep_dir / "mix.png").stat().st_size > 30_000
