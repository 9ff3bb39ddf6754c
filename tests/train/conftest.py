"""Fixtures of the trainer tests: a tiny bilingual corpus, its tokenizer, and stage files over them.

Models stay under 1M parameters and runs at a few dozen steps: these tests share two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
VOCAB = 384
# `motif train`, as every PyTorchJob pod runs it (after torchrun).
MOTIF_TRAIN = ["-m", "motif", "train"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A directory with data/ko.jsonl, data/en.jsonl and data/tokenizer (made once per session)."""
    from motif.data.corpus import documents, write_corpus
    from motif.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root / "data", docs_per_language=300, seed=1)
    train_bpe(documents("ko", 300, 1) + documents("en", 300, 1), VOCAB, root / "data" / "tokenizer")
    return root


def stage_section(name: str = "t-s0", **overrides) -> dict:
    """A tiny from-scratch stage; `overrides` replace whole top-level keys or merge into dict ones."""
    section = {
        "name": name,
        "model": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
        },
        "output": f"out/{name}",
        "data": {
            "tokenizer": "data/tokenizer",
            "seq_len": 32,
            "sources": [
                {"name": "ko", "language": "ko", "weight": 0.5, "path": "data/ko.jsonl"},
                {"name": "en", "language": "en", "weight": 0.5, "path": "data/en.jsonl"},
            ],
        },
        "optim": {"lr": 3.0e-3, "min_lr": 3.0e-4, "warmup_steps": 2, "weight_decay": 0.1},
        "train": {"max_steps": 8, "micro_batch_size": 4, "precision": "fp32", "deterministic": True},
        "parallel": {"engine": "ddp", "device": "cpu", "procs_per_node": 1, "collective_timeout_s": 60},
        "checkpoint": {"dir": f"ck/{name}", "every_steps": 4, "keep_last": 2},
    }
    for key, value in overrides.items():
        if value is None:
            section.pop(key, None)
        elif isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return section


def write_stage(workdir: Path, section: dict, filename: str | None = None) -> Path:
    path = workdir / (filename or f"{section['name']}.yaml")
    path.write_text(yaml.safe_dump({"motif": section}, sort_keys=False))
    return path


@pytest.fixture
def workdir(corpus, tmp_path) -> Path:
    """An empty working directory with the corpus linked in as data/."""
    (tmp_path / "data").symlink_to(corpus / "data")
    return tmp_path


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def motif_train(workdir: Path, stage_file: Path, *args: str, nproc: int = 1, timeout: int = 240, **env):
    """Run `motif train` as the cluster does (torchrun for nproc > 1); returns the CompletedProcess."""
    return subprocess.run(
        train_command(stage_file, *args, nproc=nproc),
        cwd=workdir,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_command(stage_file: Path, *args: str, nproc: int = 1) -> list[str]:
    tail = [*MOTIF_TRAIN, str(stage_file), "--metrics-port", "0", *args]
    if nproc == 1:
        return [PYTHON, *tail]
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *tail]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in_process(section: dict, workdir: Path, monkeypatch, **options) -> int:
    """Train a stage in this process (a world of one), from `workdir`; returns the exit status."""
    from motif.config import parse_stage
    from motif.train.command import run_stage
    from motif.train.trainer import RunOptions

    monkeypatch.chdir(workdir)
    stage = parse_stage(section, source=f"{section['name']}.yaml")
    return run_stage(stage, RunOptions(**options), metrics_port=0)


def grown_sections() -> tuple[dict, dict, dict]:
    """Stage 0 (from scratch), stage 1 (LlamaPro 2 -> 4, new blocks only), stage 2 (MSG width, ramp 4)."""
    s0 = stage_section("t-s0", train={"max_steps": 6})
    s1 = stage_section(
        "t-s1",
        model=None,
        input="out/t-s0",
        growth={"output": "out/t-s1-grown", "layers": 4, "depth_method": "llamapro"},
        train={"max_steps": 5, "freeze": "new_blocks"},
    )
    s2 = stage_section(
        "t-s2",
        model=None,
        input="out/t-s1",
        growth={"output": "out/t-s2-grown", "hidden": 96, "intermediate": 192, "heads": 6, "ramp_steps": 4},
        optim={"rewarm_steps": 3},
        train={"max_steps": 6},
    )
    return s0, s1, s2
