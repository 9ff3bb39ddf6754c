"""Case 11: optimizer state at growth. Old moments carried bit for bit, new ones zero, step reset for
wholly new tensors; one AdamW step at m = 0 moves old parameters exactly as in the un-grown model;
masked weights are not decayed."""

import pytest
import torch
from safetensors.torch import load_file

from motif.growth import GrowthTargets, grow_checkpoint, grow_model, masked_weight_decay_, plan_growth, transfer_adamw
from motif.growth.optimizer_state import new_element_flags
from motif.model.checkpoint import save
from motif.model.safetensors_io import SafetensorsWriter

from .conftest import new_part, old_part

LR, WD, BETAS = 1e-2, 0.1, (0.9, 0.999)
TARGETS = GrowthTargets(layers=8, hidden=48, intermediate=64, heads=12, kv_heads=3)


def _loss(model, tokens):
    return torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())


def _trained(model, tokens, steps=3):
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WD)
    for _ in range(steps):
        opt.zero_grad()
        _loss(model, tokens).backward()
        opt.step()
    return opt


@pytest.mark.parametrize("depth_method", ["msg", "llamapro"])
def test_moments_carried_new_slices_zero_step_reset_for_new_tensors(model, tokens, depth_method):
    opt = _trained(model, tokens)
    grown, prov = grow_model(model, TARGETS, depth_method=depth_method)
    new_opt = transfer_adamw(opt, model, grown, prov)
    plan = plan_growth(model.args, TARGETS, depth_method)
    old = dict(model.named_parameters())
    for name, p in grown.named_parameters():
        tp, state = plan.tensors[name], new_opt.state[p]
        src = opt.state[old[tp.source]]
        for key in ("exp_avg", "exp_avg_sq"):
            if tp.fresh:  # a block inserted by depth growth is wholly new
                assert not state[key].any(), name
            else:
                assert torch.equal(old_part(state[key], tp), src[key]), name
                assert not new_part(state[key], tp).any(), name
        assert state["step"].item() == (0 if tp.fresh else 3), name
    assert new_opt.defaults["betas"] == BETAS and new_opt.param_groups[0]["weight_decay"] == WD


def test_one_step_at_m0_moves_old_parameters_as_in_the_ungrown_model(model, tokens, scramble):
    opt = _trained(model, tokens)
    grown, prov = grow_model(model, TARGETS, depth_method="msg")
    scramble(grown)
    new_opt = transfer_adamw(opt, model, grown, prov)
    for group in new_opt.param_groups:
        group["weight_decay"] = 0.0  # decay comes from masked_weight_decay_
    before = {n: p.detach().clone() for n, p in grown.named_parameters()}

    opt.zero_grad()
    _loss(model, tokens).backward()
    opt.step()  # plain AdamW, weight decay 0.1
    new_opt.zero_grad()
    _loss(grown, tokens).backward()
    masked_weight_decay_(grown, LR, WD)
    new_opt.step()

    plan = plan_growth(model.args, TARGETS, "msg")
    old = dict(model.named_parameters())
    for name, p in grown.named_parameters():
        tp = plan.tensors[name]
        if not tp.fresh:
            source = old[tp.source].detach()
            torch.testing.assert_close(old_part(p.detach(), tp), source, rtol=1e-9, atol=1e-12, msg=name)
        # New weights neither learn (no gradient at m = 0) nor decay (mask 0).
        assert torch.equal(new_part(p.detach(), tp), new_part(before[name], tp)), name


def test_masked_weight_decay_is_adamw_decay_for_old_elements_and_m_scaled_for_new(model):
    grown, _ = grow_model(model, GrowthTargets(hidden=48, heads=12), seed=1)
    grown.set_growth_mask(0.25)
    for p in grown.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in grown.named_parameters()}
    masked_weight_decay_(grown, LR, WD)
    for name, p in grown.named_parameters():
        adamw = before[name].clone().mul_(1 - LR * WD)  # what torch's AdamW does
        flags = new_element_flags(name, grown.args)
        new = torch.zeros_like(p, dtype=torch.bool)
        if flags is not False:
            rows, cols = flags
            if rows is not None:
                new[rows] = True
            if cols is not None:
                new[:, cols] = True
        assert torch.equal(p.detach()[~new], adamw[~new]), name
        torch.testing.assert_close(p.detach()[new], before[name][new] * (1 - LR * WD * 0.25))


def test_new_tensors_restart_at_step_0_to_avoid_a_3x_first_update(model, tokens):
    opt = _trained(model, tokens)
    grown, prov = grow_model(model, GrowthTargets(layers=6))  # LlamaPro: new blocks at 2 and 5
    first_update = []
    for keep_old_step in (False, True):
        copy, _ = grow_model(model, GrowthTargets(layers=6))
        new_opt = transfer_adamw(opt, model, copy, prov)
        for group in new_opt.param_groups:
            group["weight_decay"] = 0.0
        o_proj = copy.model.layers[2].self_attn.o_proj.weight  # zero: the only live part of a new block
        if keep_old_step:  # the trap: zero moments with a long-running step count
            new_opt.state[o_proj]["step"].fill_(100_000.0)
        _loss(copy, tokens).backward()
        moved = o_proj.grad.abs() > 1e-4  # well above Adam eps
        new_opt.step()
        first_update.append(o_proj.detach()[moved].abs())
    torch.testing.assert_close(first_update[0], torch.full_like(first_update[0], LR), rtol=1e-3, atol=0)
    b1, b2 = BETAS
    trap = (1 - b1) / (1 - b2) ** 0.5  # bias corrections gone: about 3.16 x the learning rate
    torch.testing.assert_close(first_update[1], torch.full_like(first_update[1], trap * LR), rtol=1e-2, atol=0)


def test_optimizer_file_grows_alongside_the_weights(model, tokens, tmp_path):
    opt = _trained(model, tokens)
    save(model, tmp_path / "src", dtype="fp32")
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for p, state in opt.state.items():
        n = names[id(p)]
        tensors |= {f"exp_avg.{n}": state["exp_avg"].float(), f"exp_avg_sq.{n}": state["exp_avg_sq"].float()}
        tensors[f"step.{n}"] = state["step"].float().reshape(())
    writer = SafetensorsWriter(
        tmp_path / "src" / "optimizer.safetensors", [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    )
    for k, v in tensors.items():
        writer.write(k, v)
    writer.close()
    targets = GrowthTargets(layers=6, hidden=48)
    prov = grow_checkpoint(tmp_path / "src", tmp_path / "dst", targets)
    assert prov["optimizer"] == {"params": 6 * 9 + 3, "fresh": 2 * 9}
    grown = load_file(tmp_path / "dst" / "optimizer.safetensors")  # readable by the safetensors library
    plan = plan_growth(model.args, targets)
    for name, tp in plan.tensors.items():
        for key in ("exp_avg", "exp_avg_sq"):
            t = grown[f"{key}.{name}"]
            if tp.fresh:
                assert not t.any(), name
            else:
                assert torch.equal(old_part(t, tp), tensors[f"{key}.{tp.source}"]), name
                assert not new_part(t, tp).any(), name
        assert grown[f"step.{name}"].item() == (0.0 if tp.fresh else 3.0)
