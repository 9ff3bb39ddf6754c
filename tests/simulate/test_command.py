"""`motif simulate` from the command line: the recipes, the --json contract, exit statuses."""

import json

import pytest

from .conftest import JOBS, small_stage

KEYS = {
    "stage",
    "world_size",
    "seq_len",
    "micro_batches",
    "peak_bytes",
    "allowance_bytes",
    "total_bytes",
    "gpu_memory_bytes",
    "fits",
    "peak_at",
    "by_category_bytes",
    "step_seconds",
    "tokens_per_second_per_gpu",
    "mfu",
    "comm_bytes_per_step",
    "gpu_hours",
    "checkpoint_bytes",
    "checkpoint_write_seconds",
    "checkpoint_read_seconds",
    "checkpoint_share",
}


def _json(run_cli, capsys, *argv) -> tuple[int, list]:
    code = run_cli(["simulate", *map(str, argv), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else []


@pytest.mark.slow
def test_tiny_recipe_simulates_every_stage(run_cli, capsys):
    code, rows = _json(run_cli, capsys, JOBS / "tiny", "--engine", "fsdp", "--world", 4)
    assert code == 0
    assert [r["stage"] for r in rows] == ["tiny-s0-base", "tiny-s1-depth", "tiny-s2-width"]
    for r in rows:
        assert set(r) >= KEYS
        assert r["world_size"] == 4 and r["fits"]
        assert r["total_bytes"] == r["peak_bytes"] + r["allowance_bytes"]
        assert r["peak_bytes"] >= sum(r["by_category_bytes"].values()) * 0.999
        assert r["peak_at"].startswith("micro-batch")
        assert r["mfu"] > 0 and r["step_seconds"] > 0 and r["comm_bytes_per_step"] > 0
    # MFU counts 6 x params per token, as the trainer does: only a stage that trains everything stays below 1.
    assert rows[0]["mfu"] < 1
    # LlamaPro's stage trains only its new blocks: no optimizer state for the frozen ones.
    assert rows[1]["by_category_bytes"]["optimizer_state"] < rows[0]["by_category_bytes"]["optimizer_state"]


def test_small_shape_at_4_and_16_ranks(run_cli, capsys, tmp_path):
    stage = small_stage(tmp_path)
    _, (w4,) = _json(run_cli, capsys, stage, "--world", 4)
    _, (w16,) = _json(run_cli, capsys, stage, "--world", 16)
    for row in (w4, w16):
        assert set(row) >= KEYS and row["fits"] and 0 < row["mfu"] < 1
        assert row["total_bytes"] == row["peak_bytes"] + row["allowance_bytes"]
    c4, c16 = w4["by_category_bytes"], w16["by_category_bytes"]
    # Sharded state is 1/W of the model (rows padded up to a multiple of W).
    assert 3.5 < c4["sharded_params"] / c16["sharded_params"] <= 4.0
    assert 3.5 < c4["optimizer_state"] / c16["optimizer_state"] <= 4.0
    # Each rank sends (W-1)/W of every gathered or reduced buffer: a little more at 16 ranks.
    ratio = w16["comm_bytes_per_step"] / w4["comm_bytes_per_step"]
    assert abs(ratio - (15 / 16) / (3 / 4)) < 0.02
    assert w16["peak_bytes"] < w4["peak_bytes"]


def test_overrides_change_the_simulated_layout(run_cli, capsys, tmp_path):
    stage = small_stage(tmp_path)
    _, (base,) = _json(run_cli, capsys, stage)
    _, (long,) = _json(run_cli, capsys, stage, "--seq-len", 128, "--micro-batches", 1)
    assert (base["seq_len"], base["micro_batches"], base["world_size"]) == (64, 2, 4)
    assert (long["seq_len"], long["micro_batches"]) == (128, 1)
    assert long["by_category_bytes"]["activations"] > base["by_category_bytes"]["activations"]


def test_a_stage_that_does_not_fit_exits_1(run_cli, capsys, tmp_path):
    code, (row,) = _json(run_cli, capsys, small_stage(tmp_path, parallel__gpu_memory_gib=0.01))
    assert code == 1 and not row["fits"] and row["total_bytes"] > row["gpu_memory_bytes"]


def test_bad_input_exits_2_with_one_line(run_cli, capsys, tmp_path):
    cases = [
        ([tmp_path / "missing.yaml"], "no such stage file"),
        ([small_stage(tmp_path / "a"), "--world", "0"], "--world: expected a positive integer"),
        ([JOBS / "tiny" / "stage0-base.yaml"], "motif.parallel.engine: ddp cannot run on fake tensors"),
        ([small_stage(tmp_path / "b", parallel__engine="deepspeed")], "engine: deepspeed cannot run"),
        ([small_stage(tmp_path / "c", parallel__replicate=2), "--world", "3"], "does not divide the world size 3"),
    ]
    for argv, message in cases:
        assert run_cli(["simulate", *map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("error:") == 1


def test_compare_simulates_every_layout_of_the_global_batch(run_cli, capsys, tmp_path):
    code, rows = _json(run_cli, capsys, small_stage(tmp_path), "--compare")
    assert code == 0
    layouts = [(r["micro_batch_size"], r["micro_batches"]) for r in rows]
    assert layouts == [(1, 4), (2, 2), (4, 1)]  # 4 sequences per rank per step, kept
    assert {r["tokens_per_step"] for r in rows} == {4 * 64 * 4}
    # One gather per group per micro-batch: fewer micro-batches, less traffic.
    assert rows[0]["comm_bytes_per_step"] > rows[1]["comm_bytes_per_step"] > rows[2]["comm_bytes_per_step"]


def test_a_checkpoint_costs_a_nodes_bytes_over_its_storage_bandwidth():
    """8 ranks a node at 1 GB each, 5 GB/s per node: 1.6 s to write and to read. With HSDP over 8
    replicas the cluster holds one copy of the state (64 ranks / 8), and one write in 100 steps of
    10 s costs 1.6 s of every 1001.6."""
    from types import SimpleNamespace

    from motif.simulate.report import checkpoint_cost

    stage = SimpleNamespace(
        parallel=SimpleNamespace(procs_per_node=8, world_size=64, replicate=8),
        checkpoint=SimpleNamespace(storage_gb_s=5.0, every_steps=100, async_mode="disabled"),
    )
    cost = checkpoint_cost(stage, 10**9, step_seconds=10.0)
    assert cost["checkpoint_bytes_per_node"] == 8 * 10**9
    assert cost["checkpoint_bytes"] == 8 * 10**9
    assert cost["checkpoint_write_seconds"] == cost["checkpoint_read_seconds"] == 1.6
    assert cost["checkpoint_share"] == 1.6 / 1001.6


def test_an_asynchronous_checkpoint_stalls_training_for_its_copy_to_host_memory_only():
    """1 GB a rank copied at HOST_COPY_GB_S (10 GB/s): 0.1 s of every 1000.1; the 1.6 s write runs
    beside the steps. Checkpoints every step of 1 s leave 0.6 s of each write to wait for."""
    from types import SimpleNamespace

    from motif.simulate.report import HOST_COPY_GB_S, checkpoint_cost

    parallel = SimpleNamespace(procs_per_node=8, world_size=64, replicate=8)
    often = SimpleNamespace(storage_gb_s=5.0, every_steps=1, async_mode="async")
    rare = SimpleNamespace(storage_gb_s=5.0, every_steps=100, async_mode="async")
    copy = 10**9 / (HOST_COPY_GB_S * 1e9)
    cost = checkpoint_cost(SimpleNamespace(parallel=parallel, checkpoint=rare), 10**9, step_seconds=10.0)
    assert cost["checkpoint_write_seconds"] == 1.6 and cost["checkpoint_stall_seconds"] == copy
    assert cost["checkpoint_share"] == copy / (1000 + copy)
    cost = checkpoint_cost(SimpleNamespace(parallel=parallel, checkpoint=often), 10**9, step_seconds=1.0)
    assert cost["checkpoint_stall_seconds"] == pytest.approx(copy + 0.6)
