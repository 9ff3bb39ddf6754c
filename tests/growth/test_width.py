"""Cases 3-5: MSG hidden, attention-head (GQA) and FFN growth preserve the function at m = 0, and the
negative controls (plain RMSNorm, appended heads, Q-only mask) do not."""

import dataclasses

import pytest
import torch

from motif.growth import GrowthTargets, grow_model, plan_growth
from motif.growth.apply import apply_plan
from motif.growth.operators import Axis
from motif.model.model import RMSNorm


def test_hidden_growth_with_mask_weighted_rmsnorm_is_exact(model, tokens, scramble):
    ref = model(tokens)
    grown, _ = grow_model(model, GrowthTargets(hidden=48))
    scramble(grown)
    assert grown.args.growth.hidden == 32 and grown.growth_mask == 0.0
    torch.testing.assert_close(grown(tokens), ref, rtol=1e-10, atol=1e-10)


def test_hidden_growth_with_plain_rmsnorm_differs(model, tokens, scramble, monkeypatch):
    ref = model(tokens)
    grown, _ = grow_model(model, GrowthTargets(hidden=48))
    scramble(grown)
    plain = RMSNorm.forward
    monkeypatch.setattr(RMSNorm, "forward", lambda self, x, mask=None: plain(self, x, None))
    assert (grown(tokens) - ref).abs().max() > 1e-2


def test_ffn_growth_is_exact(model, tokens, scramble):
    ref = model(tokens)
    grown, _ = grow_model(model, GrowthTargets(intermediate=80))
    scramble(grown)
    torch.testing.assert_close(grown(tokens), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("heads", "kv_heads"), [(10, None), (12, 3), (16, 4)])
def test_interleaved_gqa_heads_with_output_mask_are_exact(model, tokens, scramble, heads, kv_heads):
    ref = model(tokens)  # 8 query heads over 2 KV heads
    grown, _ = grow_model(model, GrowthTargets(heads=heads, kv_heads=kv_heads))
    scramble(grown)
    torch.testing.assert_close(grown(tokens), ref, rtol=1e-10, atol=1e-10)


def test_old_heads_keep_their_kv_group_and_slot(model):
    grown, _ = grow_model(model, GrowthTargets(heads=10))  # 4 -> 5 query heads per KV head
    hd = model.args.head_dim
    old_q, new_q = model.model.layers[0].self_attn.q_proj.weight, grown.model.layers[0].self_attn.q_proj.weight
    for h in range(8):
        g, slot = divmod(h, 4)
        assert torch.equal(new_q[(g * 5 + slot) * hd : (g * 5 + slot + 1) * hd], old_q[h * hd : (h + 1) * hd])
    assert grown._new_heads.tolist() == [False] * 4 + [True] + [False] * 4 + [True]


def test_appended_heads_differ(model, tokens, scramble):
    ref = model(tokens)
    plan = plan_growth(model.args, GrowthTargets(heads=10))
    appended = {}
    for name, tp in plan.tensors.items():  # old heads first, new heads last: the naive layout
        axes = tuple(Axis(a.old, a.new) if a is not None else None for a in tp.axes)
        appended[name] = dataclasses.replace(tp, axes=axes)
    grown = apply_plan(model, dataclasses.replace(plan, tensors=appended))
    grown._new_heads.copy_(torch.arange(10) >= 8)  # mask the appended heads' outputs
    grown.set_growth_mask(0.0)
    scramble(grown)
    assert (grown(tokens) - ref).abs().max() > 1e-2


def test_masking_only_the_query_differs(model, tokens, scramble):
    ref = model(tokens)
    grown, _ = grow_model(model, GrowthTargets(heads=10))
    scramble(grown)
    new_rows = grown._new_heads.repeat_interleave(model.args.head_dim)
    with torch.no_grad():
        for layer in grown.model.layers:  # m = 0 on Q alone: new queries are zero
            layer.self_attn.q_proj.weight[new_rows] = 0.0
    grown._mask_heads.fill_(1.0)  # and no mask on the head outputs
    assert (grown(tokens) - ref).abs().max() > 1e-2
