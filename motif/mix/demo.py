"""The data-mix part of `motif demo`: a 3-point Korean-share sweep of a tiny stage, run as three
parallel proxy processes, the mixing law fitted, the chosen ratio printed and plotted.

It drives the same commands a user runs (`motif mix sweep --local`, `motif mix fit`), from the
demo's out dir. The stage files of the tiny recipe carry their held-out sets (`motif.eval`); a
stage file without them gets sets of the demo corpus's held-out documents, in a copy of the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARES = "0.2,0.5,0.8"
STEPS = 24
HELDOUT_DOCS = 60
HELDOUT_SEED = 991  # documents the training corpus (seed 0) does not contain


def _with_heldout(out: Path, stage_file: Path) -> Path:
    """`stage_file`, or a copy of it in `out` with held-out sets when it names none."""
    doc = yaml.safe_load(stage_file.read_text())
    if (doc["motif"].get("eval") or {}).get("heldout"):
        return stage_file
    from motif.data.corpus import documents

    heldout = []
    for lang in ("ko", "en"):
        path = out / "data" / "mix-heldout" / f"{lang}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"text": d}, ensure_ascii=False) for d in documents(lang, HELDOUT_DOCS, HELDOUT_SEED)]
        path.write_text("\n".join(lines) + "\n")
        heldout.append({"name": f"{lang}-heldout", "language": lang, "path": str(path.relative_to(out))})
    doc["motif"]["eval"] = {**(doc["motif"].get("eval") or {}), "heldout": heldout}
    copy = out / f"{stage_file.stem}.mix.yaml"
    copy.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return copy


def run_sweep_demo(out: Path, stage_file: Path, max_steps: int | None = None) -> dict:
    """Sweep `stage_file` (a tiny stage whose start checkpoint exists in `out`) at three Korean
    shares, fit, print the choice; returns the fit's JSON summary (its plot is `out/mix.png`).
    `max_steps` (the demo's --max-steps) caps the proxies' steps."""
    from motif.errors import MotifError

    steps = min(STEPS, max_steps or STEPS)
    out = out.resolve()
    stage = _with_heldout(out, stage_file.resolve())
    sweep_dir = out / "mix"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    motif = [sys.executable, "-m", "motif", "mix"]
    print(f"\n== data mix: 3 proxies of {stage_file.name} at Korean shares {SHARES}, {steps} steps each, in parallel")
    t = time.perf_counter()
    sweep = [*motif, "sweep", str(stage), "--ko", SHARES, "--steps", str(steps), "--out", str(sweep_dir), "--local"]
    r = subprocess.run([*sweep, "--quiet"], cwd=out, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise MotifError(f"motif mix sweep failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    png = out / "mix.png"
    r = subprocess.run(
        [*motif, "fit", str(sweep_dir), "--png", str(png), "--json"], cwd=out, env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise MotifError(f"motif mix fit failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    result = json.loads(r.stdout)
    for p in result["proxies"]:
        bpb = ", ".join(f"{lang} {v:.4f}" for lang, v in sorted(p["heldout"].items(), key=lambda kv: kv[0] != "ko"))
        print(f"   {p['name']}: ko share {p['ko_share']:.2f}: held-out bits per byte {bpb}")
    chosen = result["chosen"]
    weights = ", ".join(f"{s} {w:g}" for s, w in chosen["weights"].items())
    print(f"   rule: {result['rule']}")
    print(f"   chosen Korean share {chosen['ko_share']:.2f} ({weights}) in {time.perf_counter() - t:.0f}s; plot: {png}")
    return result
