"""Fixtures for growth tests: a small fp64 Llama with non-trivial weights, and a scrambler for new weights.

Every preservation test fills the new weights with large random values: passing then shows the
result does not depend on how new weights are initialised.
"""

import pytest
import torch

from motif.growth.optimizer_state import new_element_flags
from motif.model import Llama, ModelArgs

SMALL = dict(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
)


def old_part(t: torch.Tensor, tp) -> torch.Tensor:
    """The elements of a grown tensor that its source had, in the source's layout (`tp`: its TensorPlan)."""
    for dim, axis in enumerate(tp.axes):
        if axis is not None:
            t = t.index_select(dim, axis.positions())
    return t


def new_part(t: torch.Tensor, tp) -> torch.Tensor:
    """A copy of a grown tensor with the elements its source had zeroed (a fresh tensor is all new)."""
    t = t.clone()
    if tp.fresh:
        return t
    if t.dim() == 1:
        t[tp.axes[0].positions() if tp.axes[0] else slice(None)] = 0
        return t
    rows, cols = (a.positions() if a else torch.arange(n) for a, n in zip(tp.axes, t.shape, strict=True))
    t[rows[:, None], cols[None, :]] = 0
    return t


def make_model(seed: int = 0, **changes) -> Llama:
    model = Llama(ModelArgs(**{**SMALL, **changes})).to(torch.float64).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)
    return model


@torch.no_grad()
def scramble_new(model: Llama, new_layers: tuple[int, ...] = (), scale: float = 50.0, seed: int = 123) -> None:
    """Overwrite every new weight with large random values (LlamaPro's zeroed projections excepted)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        if layer is not None and int(layer) in new_layers:
            if not name.endswith(("o_proj.weight", "down_proj.weight")):
                p.copy_(noise)
            continue
        flags = new_element_flags(name, model.args)
        if flags is True:
            p.copy_(noise)
        elif flags is not False:
            rows, cols = flags
            if rows is not None:
                p[rows] = noise[rows]
            if cols is not None:
                p[:, cols] = noise[:, cols]


@pytest.fixture
def model() -> Llama:
    return make_model()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, SMALL["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(7))


@pytest.fixture
def make():
    """Factory: make(seed=0, **ModelArgs changes) -> a small fp64 Llama with non-trivial weights."""
    return make_model


@pytest.fixture
def scramble():
    return scramble_new
