"""One proxy as one process group: `motif mix trial`, what a Katib trial's pods run.

    motif-torchrun -m motif mix trial /etc/motif/stage.yaml --ko 0.3 --steps 200 \\
        --dir /workspace/ck/s3-cpt/katib/TRIAL --result /var/log/katib/motif-mix-result.json

Every rank builds the same proxy stage (the stage at Korean share `--ko`, `--steps` steps, all its
outputs under `--dir`), writes it to `<dir>/proxy.yaml` (the same bytes on every rank, each
renamed into place) and trains it with `motif train`. Rank 0 then writes the trial's result from
the proxy's last held-out record, in the format of Katib's File metrics collector (JSON, one
object per line, values as strings): `objective` (Korean held-out bits per byte, minimised) and
`heldout_bpb_<language>` per language. Local sweeps write the same file, `result.json`, into each
proxy's directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from motif.errors import MotifError
from motif.mix.mixtures import TARGET_LANGUAGE

if TYPE_CHECKING:
    from motif.mix.command import TrialRequest

RESULT_NAME = "result.json"


def result_line(heldout: dict[str, float], step: int) -> str:
    """Katib's File collector (JSON format) reads string values; `timestamp` is RFC 3339."""
    record = {"objective": f"{heldout[TARGET_LANGUAGE]:.6f}"}
    record.update({f"heldout_bpb_{lang}": f"{v:.6f}" for lang, v in sorted(heldout.items())})
    record["step"] = str(step)
    record["timestamp"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(record) + "\n"


def write_result(path: Path, heldout: dict[str, float], step: int) -> None:
    if TARGET_LANGUAGE not in heldout:
        raise MotifError(f"{path}: no {TARGET_LANGUAGE} held-out loss to report (have: {', '.join(sorted(heldout))})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(result_line(heldout, step))
    os.replace(tmp, path)


def run(args: TrialRequest) -> int:
    from motif.config import load_stage
    from motif.mix import mixtures
    from motif.mix import sweep as sw
    from motif.mix.results import heldout_points
    from motif.train import command as train_command

    stage_path = Path(args.stage_file)
    stage = load_stage(stage_path)
    doc = sw.load_document(stage_path)
    scored = sw.heldout_languages(doc["motif"], str(stage_path))
    for lang in sorted({s.language for s in stage.data.sources} - set(scored)):
        raise MotifError(
            f"{stage_path}: motif.eval.heldout: no held-out set in {lang}, a language of motif.data.sources "
            f"that the Katib Experiment reports as heldout_bpb_{lang}"
        )
    shares = mixtures.parse_shares(args.ko)
    if len(shares) != 1:
        raise MotifError(f"--ko: {args.ko!r}: a trial trains one proxy, give one share (e.g. --ko 0.3)")
    (share,) = shares
    if args.steps <= 0:
        raise MotifError(f"--steps: expected > 0, got {args.steps}")
    if Path(args.dir).exists() and not Path(args.dir).is_dir():
        raise MotifError(f"--dir: {args.dir} is not a directory (the proxy's directory: its checkpoints and outputs)")
    if args.result and Path(args.result).is_dir():
        raise MotifError(f"--result: {args.result} is a directory (expected the result file's path)")
    (proxy,) = sw.plan_grid(stage, [share], str(stage_path))
    home = Path(args.dir)
    d = sw.proxy_document(
        doc, stage, proxy, steps=args.steps, home=str(home), runner="trial", nproc=1, start=None, queue=None
    )
    sw.validate_proxy(d, str(home / "proxy.yaml"))
    home.mkdir(parents=True, exist_ok=True)
    proxy_file = home / "proxy.yaml"
    sw.write_atomic(proxy_file, sw.dump_proxy(d, str(stage_path)))
    train_parser = argparse.ArgumentParser(prog="motif train")
    train_command.add_arguments(train_parser)
    code = train_command.run(train_parser.parse_args([str(proxy_file), "--resume", "auto"]))
    if code or int(os.environ.get("RANK", "0")) != 0:
        return code
    points = heldout_points(home / "metrics.jsonl") if (home / "metrics.jsonl").is_file() else {}
    if args.steps not in points:
        raise MotifError(f"{home / 'metrics.jsonl'}: no held-out record at step {args.steps} (motif.eval.heldout)")
    write_result(Path(args.result) if args.result else home / RESULT_NAME, points[args.steps], args.steps)
    return 0
