"""The start checkpoint's held-out loss per language: what the default rule keeps English near.

The proxies record it themselves (the trainer scores a stage's start at step 0). When they do not
(records lost, a sweep of an older version), it is measured here with the same held-out sets and
scorer (`motif.eval.heldout`, motif.eval.heldout.HeldoutSet) and kept in `<sweep>/baseline.json`
so that a second fit does not score again.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from motif.errors import MotifError
from motif.mix.sweep import Sweep, write_atomic

BASELINE = "baseline.json"


@contextlib.contextmanager
def _working_dir(path: str):
    """Relative stage paths resolve against the working directory the sweep ran from."""
    here = os.getcwd()
    target = path if os.path.isdir(path) else here
    os.chdir(target)
    try:
        yield
    finally:
        os.chdir(here)


def measure(sweep_dir: Path, sweep: Sweep) -> dict[str, float] | None:
    """Cached or freshly scored held-out bits per byte of the start checkpoint; None from scratch."""
    cached = sweep_dir / BASELINE
    if cached.is_file():
        return json.loads(cached.read_text())["heldout"]
    if sweep.start_checkpoint is None:
        return None
    import torch

    import motif
    from motif.config import load_stage
    from motif.data.tokenizer import Tokenizer
    from motif.eval.heldout import HeldoutSet

    proxy_file = (sweep_dir / sweep.proxies[0].file).resolve()
    with _working_dir(sweep.workdir):
        stage = load_stage(proxy_file)
        start = Path(sweep.start_checkpoint)
        if not (start / "config.json").is_file():
            raise MotifError(
                f"{start}: start checkpoint not readable from here (run the fit where the sweep ran, "
                "or pass --baseline LANG=BPB)"
            )
        heldout = HeldoutSet.from_stage(stage, Tokenizer(stage.data.tokenizer), 0, 1)
        if heldout is None:
            raise MotifError(f"{proxy_file}: motif.eval.heldout: no held-out sources to score the start checkpoint")
        model = motif.load(start)
        with torch.no_grad():
            scores = heldout.score(model, torch.device("cpu"), lambda t: t)
    record = {"checkpoint": str(start), "heldout": {k: float(v) for k, v in scores.items()}}
    write_atomic(cached, json.dumps(record, indent=2) + "\n")
    return record["heldout"]
