"""Fixtures of the mixture-tuning tests: sweep directories whose proxies' held-out losses follow a
known mixing law (the fit must give it back), and a tiny stage file with held-out sets."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from motif.mix.sweep import Proxy, Sweep, share_tag, write_manifest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
STEPS = 40
EVAL_EVERY = 10


def law_value(law: tuple[float, float, float], x: float) -> float:
    c, k, t = law
    return c + k * math.exp(t * x)


def make_sweep(
    directory: Path,
    laws: dict[str, tuple[float, float, float]],
    shares=(0.1, 0.3, 0.5, 0.7, 0.9),
    *,
    noise: float = 0.0,
    seed: int = 0,
    start: str | None = "checkpoints/start",
    failed: dict[str, int] | None = None,
    unfinished: tuple[str, ...] = (),
    start_record: dict[str, float] | None = None,
    repeats: int = 1,
) -> Sweep:
    """A grid sweep of stage `t-s1` whose proxies' final held-out bits per byte are `laws` at their
    Korean share (plus Gaussian noise); earlier steps sit higher, as in a real run. `failed`
    marks proxies (by share tag) failed with that exit status; `unfinished` ones stop halfway;
    `start_record` is the held-out record at step 0 (the start checkpoint, the same in every proxy);
    `repeats` > 1 trains every share that many times (other data seeds, other noise)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    proxies = []
    for x, r in ((x, r) for x in shares for r in range(repeats)):
        name = f"t-s1-mix-{share_tag(x)}" + (f"-s{r + 1}" if repeats > 1 else "")
        p = Proxy(name=name, weights={"ko": round(x, 6), "en": round(1 - x, 6)}, ko_share=x, status="done", exit_code=0)
        if repeats > 1:
            p.data_seed = r
        if failed and share_tag(x) in failed:
            p.status, p.exit_code = "failed", failed[share_tag(x)]
        proxies.append(p)
        last = STEPS // 2 if share_tag(x) in unfinished else STEPS
        if p.status == "failed":
            last = EVAL_EVERY
        home = directory / name
        home.mkdir(exist_ok=True)
        with (home / "metrics.jsonl").open("w") as f:
            if start_record:  # the trainer scores the start checkpoint before the first step
                f.write(json.dumps({"step": 0, "motif_heldout_bits_per_byte": start_record}) + "\n")
            for step in range(1, last + 1):
                record = {"time": 0.0, "step": step, "stage": name, "motif_loss": {"all": 3.0}}
                if step % EVAL_EVERY == 0:
                    late = 1.0 + 0.5 * (STEPS - step) / STEPS  # losses fall as the proxy trains
                    record["motif_heldout_bits_per_byte"] = {
                        lang: law_value(law, x) * late + float(rng.normal(0.0, noise)) for lang, law in laws.items()
                    }
                f.write(json.dumps(record) + "\n")
        (directory / p.log).write_text("a proxy's log\n")
    sweep = Sweep(
        stage_file=str(directory / "t-s1.yaml"),
        stage="t-s1",
        mode="grid",
        steps=STEPS,
        runner="local",
        out=str(directory),
        workdir=str(directory),
        sources=["ko", "en"],
        languages={"ko": "ko", "en": "en"},
        stage_weights={"ko": 0.5, "en": 0.5},
        start_checkpoint=start,
        proxies=proxies,
    )
    write_manifest(directory, sweep)
    return sweep


def tiny_stage(**motif_overrides) -> dict:
    """A tiny from-scratch stage file (whole document) with held-out sets in ko and en."""
    doc = {
        "motif": {
            "name": "t-mix",
            "model": {
                "vocab_size": 384,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 256,
            },
            "output": "ck/t-mix/final",
            "data": {
                "tokenizer": "data/tokenizer",
                "seq_len": 32,
                "sources": [
                    {"name": "ko-wiki", "language": "ko", "weight": 0.5, "path": "data/ko.jsonl"},
                    {"name": "en-wiki", "language": "en", "weight": 0.5, "path": "data/en.jsonl"},
                ],
            },
            "optim": {"lr": 3.0e-3, "min_lr": 3.0e-4, "warmup_steps": 20, "weight_decay": 0.1},
            "train": {"max_steps": 200, "micro_batch_size": 4, "precision": "fp32"},
            "parallel": {"engine": "ddp", "device": "cpu", "procs_per_node": 2},
            "checkpoint": {"dir": "ck/t-mix", "every_steps": 50, "keep_last": 2},
            "eval": {
                "every_steps": 50,
                "heldout": [
                    {"name": "ko-heldout", "language": "ko", "path": "data/heldout/ko.jsonl"},
                    {"name": "en-heldout", "language": "en", "path": "data/heldout/en.jsonl"},
                ],
            },
        },
        "image": {"repository": "localhost/motif-cpu", "tag": "0.1.0"},
        "workingDir": "/workspace",
        "volumes": {"workspace": {"mountPath": "/workspace", "existingClaim": "motif-ws", "stageWritableOnly": True}},
        "monitoring": {"rules": {"enabled": False}, "dashboards": {"enabled": False}},
    }
    for key, value in motif_overrides.items():
        doc["motif"][key] = value
    return doc


def write_doc(path: Path, doc: dict) -> Path:
    path.write_text("# a tiny stage for mixture tuning\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes (to show that a refused command wrote nothing)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def motif_cli(capsys):
    """Run `motif ...` in this process; returns (exit status, stdout, stderr)."""
    from motif.cli import main

    def run(*argv: str):
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
