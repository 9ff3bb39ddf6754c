"""Checkpoint I/O: sharding, dtypes, file modes, pending-growth checkpoints, and bad inputs refused."""

import json
import os
import pickle
import stat

import pytest
import torch
from transformers import LlamaForCausalLM

import motif
from motif.errors import CheckpointError
from motif.model import GrowthState, Llama, ModelArgs
from motif.model.checkpoint import load, open_checkpoint, read_args, save

ARGS = dict(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rope_theta=10000.0,
)


def tiny(**changes) -> Llama:
    model = Llama(ModelArgs(**{**ARGS, **changes})).eval()
    model.init_weights(seed=0)
    return model


def assert_same_weights(a: Llama, b: Llama) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_sharded_round_trip_is_exact_with_0644_files(tmp_path):
    model = tiny()
    save(model, tmp_path / "ckpt", max_shard_bytes=8000)
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert "model.safetensors.index.json" in files and "model-00001-of-00012.safetensors" in files
    for f in files:
        assert stat.S_IMODE(os.stat(tmp_path / "ckpt" / f).st_mode) == 0o644, f
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left behind
    assert_same_weights(model, load(tmp_path / "ckpt"))


def test_bf16_round_trip(tmp_path):
    model = tiny()
    save(model, tmp_path / "c", dtype="bf16")
    assert read_args(tmp_path / "c").torch_dtype == "bfloat16"
    assert open_checkpoint(tmp_path / "c").dtype == torch.bfloat16
    assert load(tmp_path / "c").lm_head.weight.dtype == torch.float32  # fp32 unless asked
    back = load(tmp_path / "c", dtype=torch.bfloat16)
    assert_same_weights(model.to(torch.bfloat16), back)


def test_save_refuses_existing_dir_without_overwrite(tmp_path):
    save(tiny(), tmp_path / "c")
    with pytest.raises(CheckpointError, match="already exists"):
        save(tiny(), tmp_path / "c", overwrite=False)
    save(tiny(num_hidden_layers=3), tmp_path / "c")  # overwrite=True by default
    assert read_args(tmp_path / "c").num_hidden_layers == 3


def test_pending_growth_checkpoint_is_not_a_llama_for_transformers(tmp_path):
    growth = GrowthState(mask=0.25, hidden=24, intermediate=40, heads=2, kv_heads=2)
    model = tiny(growth=growth)
    save(model, tmp_path / "g")
    assert (tmp_path / "g" / "motif-model.safetensors").exists()
    assert not (tmp_path / "g" / "model.safetensors").exists()
    with pytest.raises((OSError, ValueError)):
        LlamaForCausalLM.from_pretrained(tmp_path / "g")
    back = motif.load(tmp_path / "g")
    assert back.args.growth == growth and back.growth_mask == 0.25
    x = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        assert torch.equal(model(x), back(x))


# ---- bad checkpoints ------------------------------------------------------------------------


@pytest.fixture
def sharded(tmp_path):
    save(tiny(), tmp_path / "c", max_shard_bytes=8000)
    return tmp_path / "c"


def test_missing_shard_is_named(sharded):
    (sharded / "model-00003-of-00012.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00003-of-00012\.safetensors: missing shard"):
        open_checkpoint(sharded)


def test_index_pointing_to_a_missing_file_is_named(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "elsewhere.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"elsewhere\.safetensors: missing shard .*model\.norm\.weight"):
        load(sharded)


def test_truncated_shard_is_named(sharded):
    shard = sharded / "model-00002-of-00012.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model-00002-of-00012\.safetensors: truncated"):
        open_checkpoint(sharded)


def test_corrupt_header_is_named(sharded):
    shard = sharded / "model-00004-of-00012.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:12] = b"\xff\xfe{["
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model-00004-of-00012\.safetensors: corrupt"):
        load(sharded)


def test_shape_mismatch_with_config_names_file_tensor_and_expected_shape(tmp_path):
    save(tiny(), tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["intermediate_size"] = 64
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: tensor model\.layers\.0\.mlp\.gate_proj\.weight "
        r"has shape \[48, 32\], config\.json implies \[64, 32\]",
    ):
        load(tmp_path / "c")


def test_unknown_format_and_missing_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(tiny().args.to_hf_config()))
    (tmp_path / "empty" / "weights.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown format"):
        load(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load(tmp_path / "nowhere")


class _Trap:
    def __reduce__(self):
        return (open, ("UNPICKLED", "w"))


def test_pickle_weights_are_refused_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "c"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(tiny().args.to_hf_config()))
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap()))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: pickle checkpoints are refused"):
        load(d)
    assert not (tmp_path / "UNPICKLED").exists()
