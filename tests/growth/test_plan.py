"""`motif plan`: shapes chained through a recipe, exact counts, memory per GPU, and the CLI."""

import json
from pathlib import Path

import pytest

from motif import cli
from motif.plan import plan_recipe

JOBS = Path(__file__).parents[2] / "jobs"


@pytest.fixture
def run_cli(monkeypatch):
    # Only the commands under test: the CLI imports every registered command module to build --help.
    monkeypatch.setattr(cli, "COMMANDS", {"grow": "motif.growth.command", "plan": "motif.plan"})
    return cli.main


def test_102b_recipe_chains_shapes_and_fits_its_gpus():
    rows = {r["stage"]: r for r in plan_recipe(JOBS / "llama3-motif-102b")}
    s1, s2, s3 = rows["s1-depth"], rows["s2-width"], rows["s3-cpt"]
    assert s1["before"]["params"] == 70_553_706_496 and s1["after"]["layers"] == 96
    assert s1["new_layers"] == [6 * k + 5 for k in range(16)]
    assert s1["trainable_params"] == 16 * (s1["params"] - 2 * 128256 * 8192 - 8192) // 96
    assert s2["before"] == s1["after"]  # stage 2's input is stage 1's output
    assert s2["params"] == s3["params"] == 102_022_456_320
    assert s3["before"] == s3["after"] == s2["after"]
    assert all(r["fits"] for r in rows.values())
    assert s2["world_size"] == 128 and s2["memory_bytes"]["total"] < 80 * 2**30


def test_memory_is_sharded_by_the_engine_and_shrinks_with_checkpointing(tmp_path):
    import yaml

    s2 = plan_recipe(JOBS / "llama3-motif-102b")[1]
    m = s2["memory_bytes"]
    assert m["activations_checkpointed"] < m["activations_full"] / 5
    assert s2["engine"] == "fsdp" and s2["shards"] == 128
    # FSDP2: fp32 master weights, fp32 gradients, two Adam moments, each split 128 ways.
    n = s2["params"]
    assert (m["weights"], m["grads"], m["optimizer"]) == (4 * n // 128, 4 * n // 128, 8 * n // 128)
    # The same stage on other engines and layouts.
    doc = yaml.safe_load((JOBS / "llama3-motif-102b" / "stage3-cpt.yaml").read_text())
    doc["motif"]["model"] = {  # its input's shape (stage 2's output), stated so the file plans on its own
        "vocab_size": 128256,
        "hidden_size": 9216,
        "intermediate_size": 30720,
        "num_hidden_layers": 96,
        "num_attention_heads": 72,
        "num_key_value_heads": 8,
        "head_dim": 128,
    }
    states = {}
    for engine, replicate in (("fsdp", 1), ("fsdp", 16), ("deepspeed", 1), ("ddp", 1)):
        doc["motif"]["parallel"] = {**doc["motif"]["parallel"], "engine": engine, "replicate": replicate}
        recipe = tmp_path / f"{engine}-{replicate}"
        recipe.mkdir()
        (recipe / "s.yaml").write_text(yaml.safe_dump(doc))
        (row,) = plan_recipe(recipe)
        mem = row["memory_bytes"]
        states[engine, replicate] = mem["weights"] + mem["grads"] + mem["optimizer"]
    assert states["fsdp", 16] == 16 * states["fsdp", 1]  # HSDP: sharded within a node of 8, not over 128
    assert states["deepspeed", 1] == (2 + 4 + 2 + 4 + 8) * n // 128  # bf16 partition + master, 2 gradients, Adam
    assert states["ddp", 1] == (4 + 8 + 8) * n  # replicated: the 102B stage cannot run on it


def test_plan_cli_table_and_json(run_cli, capsys):
    assert run_cli(["plan", str(JOBS / "llama3-motif-102b")]) == 0
    table = capsys.readouterr().out
    assert "102,022M" in table and "s1-depth" in table and "NO" not in table
    assert run_cli(["plan", str(JOBS / "tiny"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in rows] == ["tiny-s0-base", "tiny-s1-depth", "tiny-s2-width"]
    assert rows[2]["before"]["layers"] == 6 and rows[2]["after"]["hidden"] == 192
    assert isinstance(rows[2]["params"], int)


def test_plan_of_a_missing_recipe_is_a_one_line_error(run_cli, capsys, tmp_path):
    assert run_cli(["plan", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err.strip() == f"motif plan: error: {tmp_path}: no stage files (*.yaml) in this directory"
    )
