"""Model shape: `ModelArgs`, field-for-field the Hugging Face `LlamaConfig`, plus pending growth masks.

Field names are those of `LlamaConfig` so a `config.json` maps onto `ModelArgs` without renaming.
`config.json` files in the wild spell RoPE two ways: `rope_theta` + `rope_scaling` (Meta's configs,
transformers 4.x) and `rope_parameters` (transformers 5.x); both are read, and both are written so
either transformers generation loads what motif saves.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from motif.errors import CheckpointError

# The tensor dtypes a checkpoint may declare (`torch_dtype`) and motif can compute in.
DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclass
class GrowthState:
    """MSG masks still pending on a grown model: which parts are new, and the current mask value m.

    Old weights always sit in the top-left block of a grown matrix, so "new" is described by the old
    sizes. Query heads are interleaved per KV group (see `motif.growth.operators.head_positions`), so the new heads are
    derived from the old (heads, kv_heads) pair, not a prefix.
    """

    mask: float = 0.0  # m: 0 right after growth (exact function), ramps to 1, then masks are removed
    hidden: int | None = None  # old hidden size; dims >= it are new (mask m)
    intermediate: int | None = None  # old FFN size
    heads: int | None = None  # old query heads (head outputs of new heads are masked)
    kv_heads: int | None = None  # old KV heads (set whenever heads is set)
    blend_layers: list[int] = field(default_factory=list)  # MSG depth blocks: h + m * (block(h) - h)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> GrowthState:
        if not isinstance(d, dict):
            raise CheckpointError(f"motif_growth: expected a mapping, got {_show(d)}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known), key=repr)
        if unknown:
            raise CheckpointError(f"motif_growth.{unknown[0]}: unknown key (expected one of: {', '.join(known)})")
        mask = _number(d, "mask", 0.0, "motif_growth.")
        if not 0.0 <= mask <= 1.0:
            raise CheckpointError(f"motif_growth.mask: expected 0 <= m <= 1, got {mask}")
        sizes = {k: _positive_int(d, k, None, "motif_growth.") for k in ("hidden", "intermediate", "heads", "kv_heads")}
        if (sizes["heads"] is None) != (sizes["kv_heads"] is None):
            given, missing = ("heads", "kv_heads") if sizes["kv_heads"] is None else ("kv_heads", "heads")
            raise CheckpointError(f"motif_growth.{missing}: missing (expected whenever {given} is given)")
        blend = d.get("blend_layers", [])
        if not isinstance(blend, list) or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in blend):
            raise CheckpointError(f"motif_growth.blend_layers: expected a list of layer indices, got {_show(blend)}")
        return cls(mask=mask, blend_layers=list(blend), **sizes)


# The dimensions that make a shape: a stage file's `model:` section is checked against an input on these.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)


@dataclass
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 0  # 0 (absent from config.json): hidden_size // num_attention_heads, as transformers does
    max_position_embeddings: int = 8192
    rope_theta: float = 500000.0
    # None, or Llama 3.1's {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"  # the dtype the weights are stored in
    growth: GrowthState | None = None  # pending MSG masks; None for a plain Llama

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        for name in (*SHAPE_FIELDS, "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise CheckpointError(f"{name}: expected a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"num_attention_heads: {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise CheckpointError(f"head_dim: RoPE needs an even head_dim, got {self.head_dim}")
        if self.torch_dtype not in DTYPES:
            raise CheckpointError(f"torch_dtype: expected one of {', '.join(DTYPES)}, got {self.torch_dtype!r}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type")
            if kind != "llama3":
                raise CheckpointError(f"rope_scaling.rope_type: only 'llama3' (Llama 3.1) is supported, got {kind!r}")
            for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if key not in self.rope_scaling:
                    raise CheckpointError(f"rope_scaling.{key}: missing (needed by rope_type llama3)")

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    # ---- Hugging Face config.json ------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelArgs:
        """Read a `config.json` mapping (transformers 4.x or 5.x spelling, or motif's own).

        Every value is type-checked: a wrong one is a CheckpointError naming the key and what was
        expected, never a TypeError from deep inside (config.json files are edited by hand).
        """
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"hidden_act: only silu (SwiGLU) is supported, got {_show(act)}")
        for key in ("attention_bias", "mlp_bias"):
            if config.get(key):
                raise CheckpointError(f"{key}: Llama 3 has no biases; got {_show(config[key])}")
        for key in REQUIRED:
            if key not in config:
                raise CheckpointError(f"{key}: missing from config.json")
        heads = _positive_int(config, "num_attention_heads")
        rope_theta, rope_scaling = _read_rope(config)
        growth = config.get("motif_growth")
        return cls(
            vocab_size=_positive_int(config, "vocab_size"),
            hidden_size=_positive_int(config, "hidden_size"),
            intermediate_size=_positive_int(config, "intermediate_size"),
            num_hidden_layers=_positive_int(config, "num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=_positive_int(config, "num_key_value_heads", heads),
            head_dim=_positive_int(config, "head_dim", 0),
            max_position_embeddings=_positive_int(config, "max_position_embeddings", 8192),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            rms_norm_eps=_number(config, "rms_norm_eps", 1e-5, positive=True),
            tie_word_embeddings=_bool(config, "tie_word_embeddings", False),
            torch_dtype=_read_dtype(config),
            growth=GrowthState.from_dict(growth) if growth is not None else None,
        )

    def to_hf_config(self) -> dict[str, Any]:
        """The `config.json` mapping. Plain Llama when no growth is pending; motif's own type otherwise.

        A model with masks below 1 is not a Llama: it gets a model_type transformers does not know,
        so nothing loads it silently as a plain `LlamaForCausalLM`.
        """
        rope_scaling = dict(self.rope_scaling) if self.rope_scaling else None
        rope_parameters = {"rope_type": "default", **(rope_scaling or {}), "rope_theta": self.rope_theta}
        config: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "rope_parameters": rope_parameters,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.torch_dtype,
            "dtype": self.torch_dtype,
        }
        if self.growth is not None:
            config["architectures"] = ["MotifGrowingLlamaForCausalLM"]
            config["model_type"] = "motif_growing_llama"
            config["motif_growth"] = self.growth.to_dict()
        return config

    # ---- sizes ------------------------------------------------------------------------------

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight by its HF name, in checkpoint order (embedding, blocks, final norm, head)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, d)}
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (d,)
            shapes[p + "self_attn.q_proj.weight"] = (q, d)
            shapes[p + "self_attn.k_proj.weight"] = (kv, d)
            shapes[p + "self_attn.v_proj.weight"] = (kv, d)
            shapes[p + "self_attn.o_proj.weight"] = (d, q)
            shapes[p + "post_attention_layernorm.weight"] = (d,)
            shapes[p + "mlp.gate_proj.weight"] = (f, d)
            shapes[p + "mlp.up_proj.weight"] = (f, d)
            shapes[p + "mlp.down_proj.weight"] = (d, f)
        shapes["model.norm.weight"] = (d,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, d)
        return shapes

    def num_params(self) -> int:
        """Exact parameter count (a tied head counts once)."""
        return sum(math.prod(s) for s in self.tensor_shapes().values())

    def largest_group_params(self) -> int:
        """Parameters of the largest unit a sharded engine gathers at once: a block, or the embedding
        (or the head, of the same size)."""
        block = sum(math.prod(s) for n, s in self.tensor_shapes().items() if n.startswith("model.layers.0."))
        return max(block, self.vocab_size * self.hidden_size)

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward) for MFU: 6N + attention.

        N leaves out the input embedding (a lookup, no matmul); the attention term is the usual
        12 * layers * heads * head_dim * seq_len (QK^T and AV, forward and backward, no causal halving).
        """
        n = self.num_params() - self.vocab_size * self.hidden_size
        if self.tie_word_embeddings:
            n += self.vocab_size * self.hidden_size  # the tied matrix still does the head matmul
        attention = 12 * self.num_hidden_layers * self.num_attention_heads * self.head_dim * seq_len
        return 6 * n + attention

    def replace(self, **changes: Any) -> ModelArgs:
        return dataclasses.replace(self, **changes)


REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _show(value: Any) -> str:
    return "null" if value is None else f"{value!r} ({type(value).__name__})"


def _positive_int(config: dict[str, Any], key: str, default: Any = ..., prefix: str = "") -> Any:
    """config[key] as a positive integer; `default` when absent or null (required when `...`)."""
    value = config.get(key)
    if value is None:
        if default is ...:
            raise CheckpointError(f"{prefix}{key}: missing from config.json")
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{prefix}{key}: expected a positive integer, got {_show(value)}")
    return value


def _number(config: dict[str, Any], key: str, default: float, prefix: str = "", positive: bool = False) -> float:
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckpointError(f"{prefix}{key}: expected a finite number, got {_show(value)}")
    if positive and value <= 0:
        raise CheckpointError(f"{prefix}{key}: expected a number > 0, got {value}")
    return float(value)


def _bool(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckpointError(f"{key}: expected true or false, got {_show(value)}")
    return value


def _read_rope(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = config.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise CheckpointError(f"rope_parameters: expected a mapping, got {_show(params)}")
    if params is not None and "rope_theta" in params:  # transformers 5.x
        prefix = "rope_parameters."
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        theta = _number(params, "rope_theta", 500000.0, prefix, positive=True)
    else:  # transformers 4.x, Meta's configs
        prefix = "rope_scaling."
        raw = config.get("rope_scaling")
        if raw is not None and not isinstance(raw, dict):
            raise CheckpointError(f"rope_scaling: expected a mapping or null, got {_show(raw)}")
        scaling = dict(raw or {})
        theta = _number(config, "rope_theta", 500000.0, positive=True)
    kind = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if not isinstance(kind, str):
        raise CheckpointError(f"{prefix}rope_type: expected a string, got {_show(kind)}")
    if kind == "default":
        return theta, None
    for key in ROPE_NUMBERS:
        if key in scaling:
            _number(scaling, key, 0.0, prefix, positive=True)
    return theta, {"rope_type": kind, **scaling}


def _read_dtype(config: dict[str, Any]) -> str:
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    if not isinstance(dtype, str):
        raise CheckpointError(f"torch_dtype: expected one of {', '.join(DTYPES)}, got {_show(dtype)}")
    return dtype.removeprefix("torch.")
