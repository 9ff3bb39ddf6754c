"""Numerics options of a stage: activation checkpointing changes nothing, gradient accumulation
equals the larger batch, bf16 autocast trains close to fp32."""

import pytest
import torch
from safetensors.torch import load_file

from motif.metrics.jsonl import read

from .conftest import run_in_process, stage_section


def _train(workdir, monkeypatch, name, **train):
    section = stage_section(name, train={"max_steps": 3, **train})
    assert run_in_process(section, workdir, monkeypatch) == 0
    weights = load_file(str(workdir / "out" / name / "model.safetensors"))
    losses = [r["motif_loss"]["all"] for r in read(workdir / "ck" / name / "metrics.jsonl") if "motif_loss" in r]
    return weights, losses


def test_activation_checkpointing_gives_the_same_weights(workdir, monkeypatch):
    plain, _ = _train(workdir, monkeypatch, "plain")
    ckpt, _ = _train(workdir, monkeypatch, "ckpt", activation_checkpointing=True)
    assert all(torch.equal(plain[k], ckpt[k]) for k in plain)


def test_gradient_accumulation_equals_the_larger_batch(workdir, monkeypatch):
    big, big_losses = _train(workdir, monkeypatch, "big", micro_batch_size=4, grad_accum_steps=1)
    acc, acc_losses = _train(workdir, monkeypatch, "acc", micro_batch_size=2, grad_accum_steps=2)
    assert acc_losses == pytest.approx(big_losses, rel=1e-5)
    # Adam divides by sqrt(v): gradients summed in another order move some weights by ~1e-5 (lr 3e-3).
    assert all(torch.allclose(big[k], acc[k], atol=1e-4) for k in big)


def test_bf16_autocast_trains_close_to_fp32(workdir, monkeypatch):
    _, fp32 = _train(workdir, monkeypatch, "f32")
    _, bf16 = _train(workdir, monkeypatch, "b16", precision="bf16")
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 == pytest.approx(fp32, rel=0.02)
