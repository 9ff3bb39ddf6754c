"""The data-mix part of `motif demo`: a 5-point Korean-share sweep of a tiny stage, run as five
parallel proxy processes, the mixing law fitted and validated (each proxy predicted by the law
fitted to the other four; bootstrap intervals), the chosen ratio printed with its interval and
plotted. Five is the fewest that validates a 3-parameter law: three only interpolate.

It drives the same commands a user runs (`motif mix sweep --local`, `motif mix fit`), from the
demo's out dir, where the tiny recipe's held-out sets (`motif.eval.heldout`) and the stage's start
checkpoint already are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARES = "0.1,0.3,0.5,0.7,0.9"
STEPS = 24


def _last_line(r: subprocess.CompletedProcess) -> str:
    lines = (r.stderr or r.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {r.returncode}"


def run_sweep_demo(out: Path, stage_file: Path, max_steps: int | None = None, keep: bool = False) -> dict:
    """Sweep `stage_file` (a tiny stage whose start checkpoint exists in `out`) at five Korean
    shares, fit, print the choice and whether the fit is validated; returns the fit's JSON summary
    (its plot is `out/mix.png`).
    `max_steps` (the demo's --max-steps) caps the proxies' steps; `keep` keeps the proxies of an
    earlier demo run (otherwise they are trained again, from this run's start checkpoint)."""
    from motif.errors import MotifError

    steps = min(STEPS, max_steps or STEPS)
    out = out.resolve()
    stage = stage_file.resolve()
    sweep_dir = out / "mix"
    if not keep and (sweep_dir / "sweep.json").is_file():
        shutil.rmtree(sweep_dir)  # an earlier demo's sweep, of an earlier start checkpoint
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    motif = [sys.executable, "-m", "motif", "mix"]
    n = len(SHARES.split(","))
    print(f"\n== data mix: {n} proxies of {stage_file.name} at Korean shares {SHARES}, {steps} steps each, in parallel")
    t = time.perf_counter()
    # Two held-out points per proxy (its middle and end; one in a --max-steps run) besides its start:
    # scoring is most of a tiny proxy's time, and five proxies share two cores.
    points = "1" if max_steps else "2"
    sweep = [*motif, "sweep", str(stage), "--ko", SHARES, "--steps", str(steps), "--points", points, "--local"]
    sweep += ["--out", str(sweep_dir)]
    r = subprocess.run([*sweep, "--quiet"], cwd=out, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise MotifError(f"motif mix sweep failed: {_last_line(r)} (proxy logs in {sweep_dir})")
    png = out / "mix.png"
    r = subprocess.run(
        [*motif, "fit", str(sweep_dir), "--png", str(png), "--json"], cwd=out, env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise MotifError(f"motif mix fit failed: {_last_line(r)}")
    result = json.loads(r.stdout)
    langs = sorted(result["fits"], key=lambda lang: lang != "ko")
    for i, p in enumerate(result["proxies"]):
        bpb = ", ".join(f"{lang} {p['heldout'][lang]:.4f}" for lang in langs)
        loo = ", ".join(_loo(result["fits"][lang]["loo_errors"], i, lang) for lang in langs)
        print(f"   {p['name']}: ko share {p['ko_share']:.2f}: held-out bits per byte {bpb}; leave-one-out error {loo}")
    for lang in langs:
        fit = result["fits"][lang]
        rmse = "n/a" if fit["loo_rmse"] is None else f"{fit['loo_rmse']:.4f} bpb"
        if fit.get("loo_skill") is not None:
            rmse += f" (skill {fit['loo_skill']:+.2f}; <= 0: no better than the mean of the other proxies)"
        ci = fit["intervals"] or {}
        spans = ", ".join(f"{name} [{lo:.3g}, {hi:.3g}]" for name, (lo, hi) in ci.items())
        print(f"   {lang} law: leave-one-out rmse {rmse}; 95% intervals {spans}")
    chosen = result["chosen"]
    weights = ", ".join(f"{s} {w:g}" for s, w in chosen["weights"].items())
    interval = chosen["ko_share_interval"]
    span = f", 95% interval {interval[0]:.2f}-{interval[1]:.2f}" if interval else ""
    print(f"   rule: {result['rule']}")
    print(
        f"   chosen Korean share {chosen['ko_share']:.2f}{span} ({weights}) in {time.perf_counter() - t:.0f}s; "
        f"plot: {png}"
    )
    print(f"   fit: {verdict(result)}")
    return result


def verdict(result: dict) -> str:
    """The fit's verdict from `motif mix fit --json`: validated or not, and, when validated, any law
    that predicts left-out mixtures no better than their mean (a validated fit can still be noise)."""
    if not result["validated"]:
        return "UNVALIDATED: " + "; ".join(result["unvalidated_reasons"])
    text = "validated (tested on mixtures it did not see: the leave-one-out errors above)"
    weak = [lang for lang, fit in result["fits"].items() if fit.get("loo_skill") is not None and fit["loo_skill"] <= 0]
    if weak:
        text += (
            f", but the {', '.join(weak)} law predicts them no better than their mean (skill <= 0): "
            "the proxies' noise is as large as the mixture's effect, so the interval, not the point, is the answer"
        )
    return text


def _loo(errors: list[float] | None, i: int, lang: str) -> str:
    return f"{lang} -" if errors is None else f"{lang} {errors[i]:+.4f}"
