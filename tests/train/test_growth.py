"""Growth in training: the loss is unchanged by growth, LlamaPro freezing, the MSG ramp and mask
removal, Adam moments carried from stage to stage, and a final model transformers loads."""

import json

import pytest
import torch
from safetensors.torch import load_file

from motif.metrics.jsonl import read

from .conftest import grown_sections, run_in_process


@pytest.fixture(scope="module")
def stages(corpus, tmp_path_factory):
    """Run stage 0 -> LlamaPro stage 1 -> MSG stage 2 once for the module's tests."""
    workdir = tmp_path_factory.mktemp("growth")
    (workdir / "data").symlink_to(corpus / "data")
    mp = pytest.MonkeyPatch()
    try:
        for section in grown_sections():
            assert run_in_process(section, workdir, mp) == 0
    finally:
        mp.undo()
    return workdir


def records(workdir, name):
    return read(workdir / "ck" / name / "metrics.jsonl")


@pytest.mark.parametrize("name", ["t-s1", "t-s2"])
def test_loss_on_the_first_batch_after_growth_equals_the_loss_before(stages, name):
    growth = [r["motif_growth_loss"] for r in records(stages, name) if "motif_growth_loss" in r]
    assert len(growth) == 1
    before, after = growth[0]["before"], growth[0]["after"]
    assert after == pytest.approx(before, rel=1e-5)
    first = next(r for r in records(stages, name) if r["step"] == 1 and "motif_loss" in r)
    # "after" is the grown model's loss on the first step's batches, before that step's update
    assert first["motif_loss"]["all"] == pytest.approx(after, rel=1e-6)


def test_llamapro_trains_only_the_new_blocks(stages):
    prov = json.loads((stages / "out/t-s1-grown/growth.json").read_text())
    new = set(prov["new_layers"])
    assert new == {1, 3}
    grown = load_file(str(stages / "out/t-s1-grown/model.safetensors"))
    final = load_file(str(stages / "out/t-s1/model.safetensors"))
    for key, value in grown.items():
        in_new = key.startswith("model.layers.") and int(key.split(".")[2]) in new
        if in_new and key.endswith(("o_proj.weight", "down_proj.weight")):
            assert not torch.equal(value, final[key]), key  # zero-initialised projections moved
        if not in_new:
            assert torch.equal(value, final[key]), key  # frozen: bit-identical


def test_frozen_moments_pass_through_and_new_blocks_restart_at_step_zero(stages):
    grown = load_file(str(stages / "out/t-s1-grown/optimizer.safetensors"))
    final = load_file(str(stages / "out/t-s1/optimizer.safetensors"))
    assert set(final) == set(grown)
    frozen = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(final[f"exp_avg.{frozen}"], grown[f"exp_avg.{frozen}"])
    assert final[f"step.{frozen}"].item() == 6  # stage 0's steps
    assert final["step.model.layers.1.mlp.up_proj.weight"].item() == 5  # new block: stage 1's steps only


def test_msg_mask_ramps_then_masks_are_removed(stages):
    masks = [r["motif_growth_mask"] for r in records(stages, "t-s2") if "motif_loss" in r]
    assert masks == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    config = json.loads((stages / "out/t-s2/config.json").read_text())
    assert config["model_type"] == "llama" and "motif_growth" not in config
    assert config["hidden_size"] == 96 and config["num_attention_heads"] == 6
    # Old tensors continue their Adam step count across the growth event.
    opt = load_file(str(stages / "out/t-s2/optimizer.safetensors"))
    assert opt["step.model.layers.0.mlp.up_proj.weight"].item() == 6 + 6
    assert opt["exp_avg.model.layers.0.mlp.up_proj.weight"].shape == (192, 96)


def test_lr_rewarms_at_the_growth_event(stages):
    lrs = [r["motif_learning_rate"] for r in records(stages, "t-s2") if "motif_loss" in r]
    assert lrs[:3] == pytest.approx([1e-3, 2e-3, 3e-3])


def test_final_checkpoint_loads_in_transformers_with_the_same_logits(stages):
    from transformers import LlamaForCausalLM

    import motif

    ours = motif.load(stages / "out/t-s2")
    hf = LlamaForCausalLM.from_pretrained(str(stages / "out/t-s2"), torch_dtype=torch.float32).eval()
    tokens = torch.randint(0, ours.args.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-4
