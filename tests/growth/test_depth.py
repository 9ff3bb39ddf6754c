"""Cases 1-2: LlamaPro depth (exact identity blocks) and MSG depth (blend mask) preserve the function."""

import torch

from motif.growth import GrowthTargets, grow_model, plan_growth
from motif.model import ModelArgs


def test_llamapro_is_exact_and_new_blocks_sit_after_every_split(model, tokens, scramble):
    ref = model(tokens)
    grown, prov = grow_model(model, GrowthTargets(layers=6))
    assert prov["new_layers"] == [2, 5] and grown.args.growth is None  # split = 4 / 2 = 2
    scramble(grown, new_layers=(2, 5))
    assert torch.equal(grown(tokens), ref)
    for j in (2, 5):
        block = grown.model.layers[j]
        assert not block.self_attn.o_proj.weight.any() and not block.mlp.down_proj.weight.any()


def test_llamapro_copies_the_block_before_it(model):
    grown, _ = grow_model(model, GrowthTargets(layers=8))  # split 1: a copy after every block
    for j in (1, 3, 5, 7):
        src, new = model.model.layers[j // 2], grown.model.layers[j]
        assert torch.equal(src.self_attn.q_proj.weight, new.self_attn.q_proj.weight)
        assert torch.equal(src.mlp.up_proj.weight, new.mlp.up_proj.weight)
        assert torch.equal(src.input_layernorm.weight, new.input_layernorm.weight)


def test_llamapro_80_to_96_puts_new_blocks_at_6k_plus_5():
    args = ModelArgs(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    )
    plan = plan_growth(args, GrowthTargets(layers=96))
    assert plan.new_layers == [6 * k + 5 for k in range(16)]
    assert plan.tensors["model.layers.5.self_attn.o_proj.weight"].zero
    assert plan.tensors["model.layers.5.self_attn.q_proj.weight"].source == "model.layers.4.self_attn.q_proj.weight"
    assert plan.tensors["model.layers.95.mlp.up_proj.weight"].source == "model.layers.79.mlp.up_proj.weight"


def test_msg_depth_at_m0_is_exact_with_random_blocks(model, tokens, scramble):
    ref = model(tokens)
    grown, prov = grow_model(model, GrowthTargets(layers=8), depth_method="msg")
    assert grown.args.growth.blend_layers == prov["new_layers"] == [1, 3, 5, 7]
    scramble(grown)  # the blended blocks are wholly new: all of their weights random
    assert grown.model.layers[1].self_attn.o_proj.weight.abs().max() > 10
    torch.testing.assert_close(grown(tokens), ref, rtol=1e-12, atol=1e-12)
    grown.set_growth_mask(0.5)
    assert (grown(tokens) - ref).abs().max() > 1e-3
