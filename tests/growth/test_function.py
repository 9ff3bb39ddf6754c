"""Cases 6-9: all operators together in both orders, incremental decoding, gradients at m = 0,
continuity in m, and equality with transformers' LlamaForCausalLM at m = 1."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from motif.growth import OPERATORS, GrowthTargets, grow_model, plan_growth
from motif.growth.apply import apply_plan
from motif.growth.operators import identity_plan
from motif.model import KVCache

from .conftest import new_part, old_part

ALL = GrowthTargets(layers=8, hidden=48, intermediate=64, heads=12, kv_heads=3)
WIDTH_FIRST = [("msg_hidden", 48), ("msg_ffn", 64), ("msg_heads", 12), ("msg_depth", 8)]
DEPTH_FIRST = [("msg_depth", 8), ("msg_heads", 12), ("msg_ffn", 64), ("msg_hidden", 48)]


@pytest.mark.parametrize(
    "order",
    [WIDTH_FIRST, DEPTH_FIRST, [("llamapro_depth", 6), ("msg_hidden", 64)]],
    ids=["width-then-depth", "depth-then-width", "llamapro-then-hidden"],
)
def test_all_operators_together_in_either_order_are_exact(model, tokens, scramble, order):
    ref = model(tokens)
    plan = identity_plan(model.args)
    for name, size in order:
        plan = OPERATORS[name](plan, size)
    grown = apply_plan(model, plan)
    assert grown.growth_mask == 0.0
    scramble(grown, new_layers=tuple(plan.new_layers) if order[0][0] == "llamapro_depth" else ())
    torch.testing.assert_close(grown(tokens), ref, rtol=1e-10, atol=1e-10)


def test_both_orders_give_the_same_shape_and_new_blocks(model):
    plans = []
    for order in (WIDTH_FIRST, DEPTH_FIRST):
        plan = identity_plan(model.args)
        for name, size in order:
            plan = OPERATORS[name](plan, size)
        plans.append(plan)
    assert plans[0].args == plans[1].args
    assert plans[0].new_layers == plans[1].new_layers == [1, 3, 5, 7]


def test_incremental_decoding_of_grown_model_matches_original(model, tokens, scramble):
    ref = model(tokens)
    grown, _ = grow_model(model, ALL, depth_method="msg")
    scramble(grown)
    cache = KVCache(grown.args.num_hidden_layers)
    with torch.no_grad():
        steps = [grown(tokens[:, :6], cache)] + [grown(tokens[:, t : t + 1], cache) for t in range(6, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), ref.detach(), rtol=1e-10, atol=1e-10)


def _loss(model, tokens):
    return torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())


def test_gradients_at_m0_old_as_original_new_msg_exactly_zero(model, tokens, scramble):
    _loss(model, tokens).backward()
    ref = {n: p.grad for n, p in model.named_parameters()}
    plan = plan_growth(model.args, ALL, "msg")
    grown = apply_plan(model, plan)
    scramble(grown)
    _loss(grown, tokens).backward()
    for name, p in grown.named_parameters():
        tp = plan.tensors[name]
        if tp.fresh:  # a blended block: nothing reaches it at m = 0
            assert not p.grad.any(), name
            continue
        torch.testing.assert_close(old_part(p.grad, tp), ref[tp.source], rtol=1e-9, atol=1e-12, msg=name)
        assert not new_part(p.grad, tp).any(), f"{name}: a new element has a gradient"


def test_llamapro_gradients_only_reach_output_projections_of_new_blocks(model, tokens, scramble):
    grown, prov = grow_model(model, GrowthTargets(layers=6))
    scramble(grown, new_layers=tuple(prov["new_layers"]))
    _loss(grown, tokens).backward()
    for j in prov["new_layers"]:
        for name, p in grown.model.layers[j].named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                assert p.grad.abs().max() > 0, name
            else:
                assert not p.grad.any(), name


def test_logits_are_continuous_in_m_and_at_m1_equal_transformers(model, tokens, scramble):
    grown, _ = grow_model(model, ALL, depth_method="msg", seed=3)
    scramble(grown, scale=0.2)  # weights of the same scale as the old ones: a well-conditioned model
    with torch.no_grad():
        prev = grown(tokens)
        for m in [i / 10 for i in range(1, 11)]:
            grown.set_growth_mask(m)
            out = grown(tokens)
            # No jump anywhere along the ramp: the change shrinks in proportion to the step in m.
            near = []
            for step in (1e-6, 1e-8):
                grown.set_growth_mask(m - step)
                near.append((grown(tokens) - out).abs().max().item())
            assert near[1] < near[0] / 50 + 1e-12
            grown.set_growth_mask(m)
            assert (out - prev).abs().max() < 50  # and no blow-up between steps
            prev = out
        keys = list(grown.state_dict())
        grown.remove_growth_masks()
        assert grown.args.growth is None and list(grown.state_dict()) == keys
        torch.testing.assert_close(grown(tokens), out, rtol=1e-12, atol=1e-12)  # sum/count vs mean
        # transformers keeps its norm statistics in fp32 even in an fp64 model: compare in fp32.
        hf = LlamaForCausalLM(LlamaConfig(**grown.args.to_hf_config())).eval()
        hf.load_state_dict(grown.state_dict())
        torch.testing.assert_close(hf(tokens).logits, grown.float()(tokens), rtol=1e-5, atol=1e-5)


def test_masks_cannot_be_removed_before_m1(model):
    grown, _ = grow_model(model, GrowthTargets(hidden=48))
    grown.set_growth_mask(0.5)
    with pytest.raises(ValueError, match="m == 1"):
        grown.remove_growth_masks()
