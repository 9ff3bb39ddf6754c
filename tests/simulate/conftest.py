"""Stage files of small shapes for `motif simulate`, and the CLI limited to the command under test."""

from pathlib import Path

import pytest
import yaml

from motif import cli

JOBS = Path(__file__).parents[2] / "jobs"


def small_stage(directory: Path, **changes) -> Path:
    """A from-scratch fsdp stage of a small Llama (2 blocks, d 128), written as directory/s.yaml."""
    doc = yaml.safe_load((JOBS / "tiny" / "stage0-base.yaml").read_text())
    m = doc["motif"]
    m.pop("eval")
    m["model"] = {
        "vocab_size": 1024,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    }
    m["data"]["seq_len"] = 64
    m["train"].update(micro_batch_size=2, grad_accum_steps=2)
    m["parallel"].update(engine="fsdp", nodes=1, procs_per_node=4)
    for key, value in changes.items():
        section, name = key.split("__")
        m[section][name] = value
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def run_cli(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"simulate": "motif.simulate.command", "plan": "motif.plan"})
    return cli.main
