"""Case 10 and the checkpoint path: streamed growth equals in-memory growth, round trips, the 102B
shape arithmetic, the CLI, idempotent stage growth, and bad requests refused before any weight is read."""

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlamaForCausalLM

import motif
from motif import cli
from motif.errors import CheckpointError, GrowthError
from motif.growth import GrowthTargets, grow_checkpoint, grow_model, grow_stage
from motif.growth.targets import grown_args
from motif.model import ModelArgs
from motif.model.args import SHAPE_FIELDS
from motif.model.checkpoint import read_args, read_provenance, save
from motif.model.safetensors_io import SafetensorsWriter


@pytest.fixture(autouse=True)
def only_growth_commands(monkeypatch):
    # Only the commands under test: the CLI imports every registered command module to build --help.
    monkeypatch.setattr(cli, "COMMANDS", {"grow": "motif.growth.command", "plan": "motif.plan"})


def main(argv):
    return cli.main(argv)


WIDTH = GrowthTargets(hidden=48, intermediate=64, heads=12, kv_heads=3)


@pytest.fixture
def src(tmp_path, make):
    model = make().float()
    save(model, tmp_path / "src", max_shard_bytes=20000)
    return tmp_path / "src"


def test_streamed_growth_equals_in_memory_growth(src, tmp_path, tokens):
    targets = dataclasses.replace(WIDTH, layers=6)
    prov = grow_checkpoint(src, tmp_path / "dst", targets, seed=4)
    on_disk = motif.load(tmp_path / "dst")
    in_memory, prov2 = grow_model(motif.load(src), targets, seed=4)
    for (name, a), b in zip(on_disk.state_dict().items(), in_memory.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert on_disk.args == in_memory.args and prov["new_layers"] == prov2["new_layers"] == [2, 5]
    assert prov == read_provenance(tmp_path / "dst")
    torch.testing.assert_close(on_disk(tokens), motif.load(src)(tokens), rtol=1e-5, atol=1e-5)
    files = sorted(os.listdir(tmp_path / "dst"))
    assert "motif-model.safetensors.index.json" in files and "growth.json" in files
    assert all(stat.S_IMODE(os.stat(tmp_path / "dst" / f).st_mode) == 0o644 for f in files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no temporary left


@pytest.mark.parametrize("region", [64, 1 << 18])
def test_new_entries_are_the_same_on_any_number_of_threads_and_streamed(src, tmp_path, monkeypatch, region):
    """Each region of new entries has its own generator: one thread or two, in memory or streamed
    (written past the page cache), the values are the same."""
    monkeypatch.setattr("motif.growth.tensors.DRAW_ELEMENTS", region)  # 64: many regions per tensor
    grown = {}
    for threads in (1, 2):
        monkeypatch.setattr("motif.growth.tensors.DRAW_THREADS", threads)
        model, _ = grow_model(motif.load(src), WIDTH, seed=5)
        grown[threads] = model.state_dict()
    grow_checkpoint(src, tmp_path / "dst", WIDTH, seed=5)
    streamed = motif.load(tmp_path / "dst").state_dict()
    for name, one in grown[1].items():
        assert torch.equal(one, grown[2][name]) and torch.equal(one, streamed[name]), name
    assert grown[1]["model.embed_tokens.weight"][:, -1].abs().sum() > 0  # a new column, drawn


def test_a_process_forked_after_a_growth_grows_too(src, monkeypatch):
    """The drawing threads are the parent's: a forked child (a launcher, a worker) starts its own."""
    import time

    monkeypatch.setattr("motif.growth.tensors.DRAW_THREADS", 2)
    parent, _ = grow_model(motif.load(src), WIDTH, seed=5)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only with the parent's values
        code = 1
        try:
            child, _ = grow_model(motif.load(src), WIDTH, seed=5)
            code = 0 if all(torch.equal(v, child.state_dict()[k]) for k, v in parent.state_dict().items()) else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, "the forked child did not grow"


def test_grown_model_round_trips_with_its_masks(make, tmp_path, tokens):
    grown, _ = grow_model(make(), GrowthTargets(layers=8, hidden=48), depth_method="msg")
    grown.set_growth_mask(0.3)
    motif.save(grown, tmp_path / "g")
    back = motif.load(tmp_path / "g", dtype=torch.float64)
    assert back.args.growth == grown.args.growth and back.growth_mask == 0.3
    assert torch.equal(back(tokens), grown(tokens))


def test_llamapro_checkpoint_is_a_plain_llama_for_transformers(src, tmp_path, tokens):
    prov = grow_checkpoint(src, tmp_path / "deep", GrowthTargets(layers=6))
    assert prov["masks"] is None and prov["new_layers"] == [2, 5]
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "deep").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, motif.load(src)(tokens), rtol=1e-5, atol=1e-5)


def test_pending_masks_are_refused_by_transformers(src, tmp_path):
    grow_checkpoint(src, tmp_path / "wide", GrowthTargets(hidden=48))
    with pytest.raises((OSError, ValueError)):
        LlamaForCausalLM.from_pretrained(tmp_path / "wide")


def _hf_count(**config) -> int:
    """Parameters of transformers' LlamaForCausalLM for a shape, counted on the meta device.

    Blocks are identical, so two small instantiations (1 and 2 layers) give the count for any depth.
    """
    from transformers import LlamaConfig

    counts = []
    for layers in (1, 2):
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(**{**config, "num_hidden_layers": layers}))
        counts.append(sum(p.numel() for p in model.parameters()))
    return counts[0] + (config["num_hidden_layers"] - 1) * (counts[1] - counts[0])


def test_70b_to_102b_shape_arithmetic():
    llama3_70b = ModelArgs(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        rope_theta=500000.0,
    )
    assert llama3_70b.num_params() == 70_553_706_496
    depth = grown_args(llama3_70b, GrowthTargets(layers=96))
    motif_102b = grown_args(depth, GrowthTargets(hidden=9216, intermediate=30720, heads=72))
    # The published 102B shape; "102,022M" in the paper's table.
    assert motif_102b.num_params() == 102_022_456_320
    hf_shape = {k: v for k, v in motif_102b.to_hf_config().items() if k in (*SHAPE_FIELDS, "head_dim")}
    assert motif_102b.num_params() == _hf_count(**hf_shape)
    assert round(motif_102b.num_params() / 1e6) == 102_022
    assert round(depth.num_params() / 1e9, 1) == 84.2
    assert (
        round(grown_args(llama3_70b, GrowthTargets(hidden=9216, intermediate=30720, heads=72)).num_params() / 1e9, 1)
        == 85.4
    )
    assert motif_102b.head_dim == 128 and motif_102b.n_rep == 9


# ---- refused before any weight is read ---------------------------------------------------------


@pytest.fixture
def no_weight_reads(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr("motif.growth.streamed.map_tensor", fail)
    monkeypatch.setattr(SafetensorsWriter, "copy", fail)
    monkeypatch.setattr(SafetensorsWriter, "zeros", fail)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (GrowthTargets(layers=3), "layers: 3 would shrink the model"),
        (GrowthTargets(hidden=34), "hidden: 34 is not a multiple of head_dim 4"),
        (GrowthTargets(heads=10, kv_heads=4), "heads: 10 query heads is not a multiple of 4 KV heads"),
        (GrowthTargets(heads=8, kv_heads=4), "fewer than the source's 4"),
        (GrowthTargets(layers=7), r"layers: 4 -> 7 adds 3 blocks, which does not divide 4"),
        (GrowthTargets(layers=4), "nothing to grow"),
    ],
)
def test_impossible_targets_fail_before_reading_weights(src, tmp_path, no_weight_reads, targets, message):
    with pytest.raises(GrowthError, match=message):
        grow_checkpoint(src, tmp_path / "out", targets)
    assert not (tmp_path / "out").exists()


def test_bad_sources_fail_before_reading_weights(src, tmp_path, no_weight_reads):
    second, third = sorted(src.glob("model-*.safetensors"))[1:3]
    data = second.read_bytes()
    second.unlink()
    with pytest.raises(CheckpointError, match=rf"{second.name}: missing shard"):
        grow_checkpoint(src, tmp_path / "out", GrowthTargets(layers=8))
    second.write_bytes(data)
    third.write_bytes(third.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"{third.name}: truncated"):
        grow_checkpoint(src, tmp_path / "out", GrowthTargets(layers=8))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((src / "config.json").read_text())
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused"):
        grow_checkpoint(tmp_path / "bin", tmp_path / "out", GrowthTargets(layers=8))


def test_existing_destination_needs_overwrite(src, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        grow_checkpoint(src, tmp_path / "out", GrowthTargets(layers=8))
    grow_checkpoint(src, tmp_path / "out", GrowthTargets(layers=8), overwrite=True)
    assert read_provenance(tmp_path / "out")["shape_after"]["layers"] == 8


def test_a_crash_leaves_no_partial_checkpoint(src, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("motif.growth.streamed.grow_tensor", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        grow_checkpoint(src, tmp_path / "out", GrowthTargets(hidden=48))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ---- CLI and stage files -----------------------------------------------------------------------


def test_cli_grows_and_prints_json(src, tmp_path, capsys):
    assert main(["grow", str(src), str(tmp_path / "out"), "--layers", "8", "--heads", "12", "--json", "-q"]) == 0
    prov = json.loads(capsys.readouterr().out)
    assert prov["shape_after"]["layers"] == 8 and prov["shape_after"]["heads"] == 12
    assert prov["new_layers"] == [1, 3, 5, 7] and prov["masks"]["heads"] == 8


def test_cli_errors_are_one_line_with_exit_2(src, tmp_path, capsys):
    assert main(["grow", str(src), str(tmp_path / "out"), "--hidden", "34"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "motif grow: error: hidden: 34 is not a multiple of head_dim 4 (head_dim never changes)"


def _stage_file(tmp_path, src, **growth):
    doc = yaml.safe_load((Path(__file__).parents[2] / "jobs/tiny/stage1-depth.yaml").read_text())
    doc["motif"]["input"] = str(src)
    doc["motif"]["growth"] = {"output": str(tmp_path / "grown"), "layers": 6, **growth}
    path = tmp_path / f"stage-{len(growth)}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_stage_growth_is_idempotent(src, tmp_path, capsys):
    stage = _stage_file(tmp_path, src)
    assert main(["grow", "--stage", str(stage), "-q"]) == 0
    assert "grown:" in capsys.readouterr().out
    mtime = os.stat(tmp_path / "grown" / "growth.json").st_mtime_ns
    assert main(["grow", "--stage", str(stage), "-q"]) == 0
    assert capsys.readouterr().out.startswith("already grown")
    assert os.stat(tmp_path / "grown" / "growth.json").st_mtime_ns == mtime
    assert grow_stage(motif.config.load_stage(stage))["reused"] is True


def test_stage_output_from_another_request_is_an_error(src, tmp_path, capsys):
    assert main(["grow", "--stage", str(_stage_file(tmp_path, src)), "-q"]) == 0
    other = _stage_file(tmp_path, src, seed=1)
    assert main(["grow", "--stage", str(other), "-q"]) == 2
    assert "was grown from another request" in capsys.readouterr().err
    assert main(["grow", "--stage", str(other), "-q", "--overwrite"]) == 0
    assert read_provenance(tmp_path / "grown")["seed"] == 1


def test_stage_input_of_another_shape_is_refused_before_growing(src, tmp_path, capsys):
    stage = _stage_file(tmp_path, src)
    doc = yaml.safe_load(stage.read_text())
    found = read_args(src)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    doc["motif"]["model"] = {k: getattr(found, k) for k in (*keys, "num_key_value_heads")}
    doc["motif"]["model"]["hidden_size"] = 4 * found.hidden_size
    stage.write_text(yaml.safe_dump(doc))
    assert main(["grow", "--stage", str(stage), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"motif grow: error: {stage}: motif.model.hidden_size: ")
    assert f"but {src} has {found.hidden_size}" in err
    assert not (tmp_path / "grown").exists()


def test_an_output_of_another_growth_format_or_fingerprint_is_called_another_version_not_changed_weights():
    """`motif grow --stage` reuses an output only for the very request: one written by another version
    of motif (growth.json format, or source fingerprint over other checksums) is named as such, and
    a fingerprint of the current kind that differs is changed weights."""
    from motif.growth.provenance import FINGERPRINT, FORMAT, request_mismatch

    targets = {"num_hidden_layers": 8}
    prov = {
        "format": FORMAT,
        "source": {"path": "/m/src", "fingerprint": f"{FINGERPRINT}:ab"},
        "targets": targets,
        "depth_method": "llamapro",
        "seed": 0,
    }
    here = f"{FINGERPRINT}:ab"
    assert request_mismatch(prov, "/m/src", here, targets, "llamapro", 0) is None
    assert "weights of /m/src changed" in request_mismatch(prov, "/m/src", f"{FINGERPRINT}:cd", targets, "llamapro", 0)
    old = {**prov, "source": {"path": "/m/src", "fingerprint": "sha256-of-xxh3:ab"}}
    assert "another version of motif" in request_mismatch(old, "/m/src", here, targets, "llamapro", 0)
    assert "another version of motif" in request_mismatch(
        {**prov, "format": "motif-growth/1"}, "/m/src", here, targets, "llamapro", 0
    )
