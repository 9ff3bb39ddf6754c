"""Reference models for the model tests: small random transformers `LlamaForCausalLM`s."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def hf_config(**overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    )
    kwargs.update(overrides)
    if kwargs.get("rope_scaling"):  # LlamaConfig writes into the dict it is given
        kwargs["rope_scaling"] = dict(kwargs["rope_scaling"])
    return LlamaConfig(**kwargs)


def make_hf_model(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config(**overrides)).eval()
    with torch.no_grad():  # norm gains away from 1 so a swapped or ignored gain shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 101, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def hf_model():
    """Factory: hf_model(seed=0, **LlamaConfig overrides) -> a random LlamaForCausalLM in eval mode."""
    return make_hf_model


@pytest.fixture
def llama31_rope() -> dict:
    return dict(LLAMA31_ROPE)
