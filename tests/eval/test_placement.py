"""Blocks on successive devices: the 102B plan for one 8-GPU node, and the hand-offs on a split model.

Real GPUs are not here: the plan is checked from the shape (what a 102B checkpoint needs per GPU),
and the hand-offs run on a model split across two devices that are both the CPU.
"""

from __future__ import annotations

import pytest
import torch

from motif.eval.loader import load_eval_model
from motif.eval.placement import PlacementError, param_device, plan_placement
from motif.model.args import GrowthState, ModelArgs
from motif.model.checkpoint import load

GIB = 2**30
MOTIF_102B = ModelArgs(
    vocab_size=128256,
    hidden_size=9216,
    intermediate_size=30720,
    num_hidden_layers=96,
    num_attention_heads=72,
    num_key_value_heads=8,
)


def test_102b_in_bf16_fits_one_node_of_eight_80gb_gpus():
    gpus = [f"cuda:{i}" for i in range(8)]
    p = plan_placement(MOTIF_102B, gpus, torch.bfloat16, memory_bytes=80 * GIB, headroom_bytes=12 * GIB)
    assert sum(p.weight_bytes) == MOTIF_102B.num_params() * 2 == 204_044_912_640
    assert p.embed == 0 and p.head == 7
    assert list(p.layers) == sorted(p.layers), "layers go to the devices in order"
    assert set(p.layers) == set(range(8)), "every GPU holds blocks"
    assert max(p.weight_bytes) < 26 * GIB  # 204 GB over 8: about 25 GiB each, the rest for activations
    assert "cuda:7: layers" in p.describe() and "final norm + lm_head" in p.describe()
    assert param_device(p, "model.layers.95.mlp.up_proj.weight") == "cuda:7"
    assert param_device(p, "model.embed_tokens.weight") == "cuda:0"


def test_102b_does_not_fit_two_gpus_and_says_so():
    with pytest.raises(PlacementError, match=r"needs 9\d\.\d GiB of weights on cuda:\d .*190\.0 GiB over 2 devices"):
        plan_placement(MOTIF_102B, ["cuda:0", "cuda:1"], torch.bfloat16, memory_bytes=80 * GIB)


def test_balance_is_optimal_for_contiguous_runs():
    args = MOTIF_102B.replace(num_hidden_layers=10, vocab_size=1000)
    for n in (1, 2, 3, 4, 10):
        p = plan_placement(args, [f"cuda:{i}" for i in range(n)], torch.bfloat16)
        per_layer = sum(p.weight_bytes) // 10
        assert max(p.weight_bytes) <= per_layer * (-(-10 // n)) + 3 * 1000 * 9216 * 2


def test_msg_depth_block_is_never_first_on_a_device():
    args = ModelArgs(100, 16, 32, 8, 2, 1, growth=GrowthState(blend_layers=[2, 4, 6]))
    for n in range(2, 6):
        p = plan_placement(args, ["cpu"] * n, torch.float32)
        for i in (2, 4, 6):
            assert p.layers[i] == p.layers[i - 1], (n, p.layers)


def test_a_tied_head_stays_with_the_embedding():
    args = ModelArgs(5000, 64, 128, 6, 4, 2, tie_word_embeddings=True)
    p = plan_placement(args, ["cpu", "cpu", "cpu"], torch.float32)
    assert p.head == 0 == p.embed


def test_split_model_computes_the_same_logits(masked_ckpts):
    """MSG depth checkpoint (blended blocks, masks at 0) split over two devices: identical logits, real hand-offs."""
    path = masked_ckpts["depth"]
    tokens = torch.randint(0, 384, (2, 40), generator=torch.Generator().manual_seed(0))
    whole = load(path)(tokens)
    split = load_eval_model(path, devices=["cpu", "cpu"])
    assert len(set(split.placement.layers)) == 2, split.placement.describe()
    moved = []
    for i, block in enumerate(split.llama.model.layers):
        assert len(block._forward_pre_hooks) == 1, "each block has its hand-off hook"
        block.register_forward_pre_hook(lambda m, a, k, i=i: moved.append(i), with_kwargs=True)
    logits = split(tokens).logits
    assert moved == list(range(4)), "every block ran behind its hand-off hook"
    assert torch.equal(logits, whole)
