"""motif's Llama computes what transformers' LlamaForCausalLM computes, loading each other's checkpoints."""

import pytest
import torch
from transformers import LlamaForCausalLM

import motif
from motif.model import KVCache, Llama, ModelArgs

LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
CONFIGS = {
    "mha-ratio1": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa-ratio4-rope31": dict(num_attention_heads=8, num_key_value_heads=2, rope_scaling=LLAMA31_ROPE),
    "gqa-ratio8-5layers": dict(num_attention_heads=8, num_key_value_heads=1, num_hidden_layers=5),
    "explicit-head-dim-tied": dict(head_dim=16, num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True),
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_loads_transformers_checkpoint_with_same_logits(tmp_path, tokens, hf_model, overrides):
    hf = hf_model(**overrides)
    hf.save_pretrained(tmp_path)
    model = motif.load(tmp_path)
    assert not model.training and model.lm_head.weight.dtype == torch.float32
    with torch.no_grad():
        diff = (hf(tokens).logits - model(tokens)).abs().max().item()
    assert diff <= 1e-5
    assert model.args.num_params() == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_transformers_loads_motif_checkpoint_with_same_logits(tmp_path, tokens, hf_model, overrides):
    args = ModelArgs.from_hf_config(hf_model(**overrides).config.to_dict())
    model = Llama(args).eval()
    model.init_weights(seed=3)
    motif.save(model, tmp_path)
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        diff = (hf(tokens).logits - model(tokens)).abs().max().item()
    assert diff <= 1e-5


def test_config_spellings_of_transformers_4_and_5_agree(hf_model):
    v5 = hf_model(rope_scaling=LLAMA31_ROPE).config.to_dict()
    assert "rope_parameters" in v5
    v4 = {k: v for k, v in v5.items() if k not in ("rope_parameters", "dtype")}
    v4.update(rope_theta=10000.0, torch_dtype="bfloat16", rope_scaling={**LLAMA31_ROPE, "type": "llama3"})
    v4["rope_scaling"].pop("rope_type")
    a, b = ModelArgs.from_hf_config(v5), ModelArgs.from_hf_config(v4)
    assert a.rope_scaling == b.rope_scaling == LLAMA31_ROPE
    assert a.rope_theta == b.rope_theta == 10000.0
    assert b.torch_dtype == "bfloat16"
    assert ModelArgs.from_hf_config({**v5, "dtype": "float32"}).torch_dtype == "float32"
    again = ModelArgs.from_hf_config(a.to_hf_config())
    assert again == a


def test_incremental_decoding_matches_full_forward(tokens, hf_model):
    model = Llama(ModelArgs.from_hf_config(hf_model(rope_scaling=LLAMA31_ROPE).config.to_dict())).eval()
    model.init_weights(seed=0)
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.args.num_hidden_layers)
        steps = [model(tokens[:, :10], cache), model(tokens[:, 10:14], cache)]
        steps += [model(tokens[:, t : t + 1], cache) for t in range(14, tokens.shape[1])]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-5


def test_activation_checkpointing_gives_the_same_gradients(tokens, hf_model):
    model = Llama(ModelArgs.from_hf_config(hf_model().config.to_dict())).train()
    model.init_weights(seed=0)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_activation_checkpointing(enabled)
        model(tokens).logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-7)


def test_init_weights_is_seeded_and_scaled(hf_model):
    args = ModelArgs.from_hf_config(hf_model().config.to_dict())
    a, b = Llama(args), Llama(args)
    a.init_weights(seed=5)
    b.init_weights(seed=5)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.model.norm.weight, torch.ones(args.hidden_size))
    assert abs(a.model.embed_tokens.weight.std().item() - 0.02) < 0.002


def test_flops_per_token_is_6n_plus_attention():
    args = ModelArgs(
        vocab_size=10,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    n = args.num_params() - 10 * 8
    assert args.flops_per_token(32) == 6 * n + 12 * 2 * 2 * 4 * 32
