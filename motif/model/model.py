"""Llama 3 in plain PyTorch, with module names identical to transformers' `LlamaForCausalLM`.

State-dict keys are therefore the Hugging Face tensor names and checkpoints need no renaming. The
model also carries the masks of Masked Structure Growth (MSG) while a growth event ramps (see
`args.GrowthState` and docs/growth.md): the mask values live in non-persistent buffers that are
updated in place, so moving m from 0 to 1 never reallocates or recompiles, and a model without
pending growth runs the plain Llama path with no mask arithmetic at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from motif.model.args import ModelArgs


@dataclass
class Masks:
    """Mask vectors applied in one forward pass (None where that structure did not grow)."""

    hidden: torch.Tensor | None  # [hidden_size]: residual stream, norm statistics
    ffn: torch.Tensor | None  # [intermediate_size]: SwiGLU product
    heads: torch.Tensor | None  # [num_attention_heads]: attention output of each query head
    blend: torch.Tensor | None  # 0-d: m, for MSG depth blocks


class KVCache:
    """Keys and values of past positions, per layer, for incremental decoding."""

    def __init__(self, num_layers: int) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers

    @property
    def length(self) -> int:
        first = self.layers[0]
        return 0 if first is None else first[0].shape[2]

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past = self.layers[i]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        self.layers[i] = (k, v)
        return k, v


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """RoPE inverse frequencies (fp32), with Llama 3.1's long-context scaling when configured."""
    dim = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    s = args.rope_scaling
    if s is None:
        return inv_freq
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    # Same arithmetic as Meta's reference and transformers, so logits match to the last bit we test.
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RMSNorm(nn.Module):
    """RMSNorm in (at least) fp32; with a mask, the statistic is mask-weighted so new (zero) dims do not dilute it."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))  # fp32 statistics for bf16; fp64 stays fp64
        if mask is None:
            var = x.pow(2).mean(-1, keepdim=True)
        else:
            mask = mask.to(x.dtype)
            var = (x.pow(2) * mask).sum(-1, keepdim=True) / mask.sum()
        x = x * torch.rsqrt(var + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.num_attention_heads, args.num_key_value_heads, args.head_dim
        d = args.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        head_mask: torch.Tensor | None,
        cache: tuple[KVCache, int] | None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache[0].update(cache[1], k, v)
        s = k.shape[2]
        if s == t:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif t == 1:
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:  # a chunk appended to a cache: causal over the chunk, full over the past
            allowed = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=s - t)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
        if head_mask is not None:
            # Masking the head output, not its query: a zero query still averages the shared V.
            out = out * head_mask.to(out.dtype).view(1, -1, 1, 1)
        projected: torch.Tensor = self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        return projected


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, ffn_mask: torch.Tensor | None) -> torch.Tensor:
        a = F.silu(self.gate_proj(x)) * self.up_proj(x)
        if ffn_mask is not None:
            a = a * ffn_mask.to(a.dtype)
        out: torch.Tensor = self.down_proj(a)
        return out


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        masks: Masks | None = None,
        cache: tuple[KVCache, int] | None = None,
    ) -> torch.Tensor:
        mh = masks.hidden if masks is not None else None
        attn: torch.Tensor = self.self_attn(
            self.input_layernorm(h, mh), cos, sin, masks.heads if masks else None, cache
        )
        h = h + (attn if mh is None else attn * mh.to(attn.dtype))
        mlp: torch.Tensor = self.mlp(self.post_attention_layernorm(h, mh), masks.ffn if masks else None)
        return h + (mlp if mh is None else mlp * mh.to(mlp.dtype))


class LlamaModel(nn.Module):
    """The decoder body, `model.*` in HF names."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class Llama(nn.Module):
    """Llama 3 causal LM: `forward(tokens[B, T]) -> logits[B, T, V]`."""

    # Buffers made by init_buffers (declared for the type checker: nn.Module types attributes as Tensor | Module)
    inv_freq: torch.Tensor
    _new_hidden: torch.Tensor | None
    _new_ffn: torch.Tensor | None
    _new_heads: torch.Tensor | None
    _mask_hidden: torch.Tensor | None
    _mask_ffn: torch.Tensor | None
    _mask_heads: torch.Tensor | None
    _mask_blend: torch.Tensor | None

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = LlamaModel(args)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.activation_checkpointing = False
        self.init_buffers()

    @classmethod
    def from_state_dict(cls, args: ModelArgs, state: dict[str, torch.Tensor], device: torch.device | str) -> Llama:
        """A model that takes ownership of `state`'s tensors (built on the meta device: no init, no copy).

        With tied embeddings the tie is restored: `lm_head.weight` is the embedding, whatever `state` holds.
        """
        with torch.device("meta"):
            model = cls(args)
        if args.tie_word_embeddings:
            state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
        model.load_state_dict(state, strict=True, assign=True)
        if args.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.init_buffers(device)
        return model

    # ---- buffers (not in the state dict) ------------------------------------------------------

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)create RoPE frequencies and growth masks, e.g. after loading weights onto a meta model."""
        if device is None:
            device = self.model.embed_tokens.weight.device
            if device.type == "meta":
                device = torch.device("cpu")
        self.register_buffer("inv_freq", rope_inv_freq(self.args).to(device), persistent=False)
        # Masks follow the weights' dtype, as `.to(dtype)` would make them anyway (never below fp32).
        dtype = torch.promote_types(self.model.embed_tokens.weight.dtype, torch.float32)
        g = self.args.growth
        a = self.args
        new_hidden = _new_prefix(a.hidden_size, g.hidden if g else None)
        new_ffn = _new_prefix(a.intermediate_size, g.intermediate if g else None)
        new_heads = None
        if g is not None and g.heads is not None and g.kv_heads is not None:  # both or neither (GrowthState)
            new_heads = new_head_flags(g.heads, g.kv_heads, a.num_attention_heads, a.num_key_value_heads)
        for name, flags in (("hidden", new_hidden), ("ffn", new_ffn), ("heads", new_heads)):
            # `_new_*`: which entries are new (fixed); `_mask_*`: their current value (updated in place).
            self.register_buffer(f"_new_{name}", None if flags is None else flags.to(device), persistent=False)
            mask = None if flags is None else torch.ones(len(flags), device=device, dtype=dtype)
            self.register_buffer(f"_mask_{name}", mask, persistent=False)
        blend = torch.tensor(1.0, device=device, dtype=dtype) if g and g.blend_layers else None
        self.register_buffer("_mask_blend", blend, persistent=False)
        self._blend_layers = frozenset(g.blend_layers) if g else frozenset()
        if g is not None:
            self._write_masks(g.mask)

    def _write_masks(self, m: float) -> None:
        for name in ("hidden", "ffn", "heads"):
            mask, new = getattr(self, f"_mask_{name}"), getattr(self, f"_new_{name}")
            if mask is not None:
                mask.fill_(1.0).masked_fill_(new, m)
        if self._mask_blend is not None:
            self._mask_blend.fill_(m)

    # ---- growth masks -----------------------------------------------------------------------------

    @property
    def growth_mask(self) -> float:
        """Current MSG mask value m (1.0 when no growth is pending)."""
        return 1.0 if self.args.growth is None else self.args.growth.mask

    def set_growth_mask(self, m: float) -> None:
        """Set m in place (0 <= m <= 1): no reallocation, so a compiled model is not recompiled."""
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"growth mask must be in [0, 1], got {m}")
        if self.args.growth is None:
            if m != 1.0:
                raise ValueError("no growth is pending: the mask is fixed at 1.0")
            return
        self.args.growth.mask = float(m)
        self._write_masks(float(m))

    def remove_growth_masks(self) -> None:
        """Drop the masks once m == 1: the module becomes a plain Llama of the grown shape."""
        if self.args.growth is None:
            return
        if self.args.growth.mask != 1.0:
            raise ValueError(f"growth masks can only be removed at m == 1, the mask is {self.args.growth.mask}")
        self.args.growth = None
        self.init_buffers(self.inv_freq.device)

    def masks(self) -> Masks | None:
        if self.args.growth is None:
            return None
        return Masks(self._mask_hidden, self._mask_ffn, self._mask_heads, self._mask_blend)

    # ---- training helpers -----------------------------------------------------------------------

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.activation_checkpointing = bool(enabled)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """From-scratch initialisation: normal(0, 0.02) for matrices and embeddings, 1 for norm gains."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.model.embed_tokens.weight.device).manual_seed(seed)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.normal_(0.0, 0.02, generator=gen)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    # ---- forward ----------------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [B, T, V] in fp32 (fp64 for an fp64 model). With a `cache`, tokens continue the cached sequence."""
        start = cache.length if cache is not None else 0
        masks = self.masks()
        h = self.model.embed_tokens(tokens)
        if masks is not None and masks.hidden is not None:
            h = h * masks.hidden.to(h.dtype)
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq.float()[None, :]  # fp32, as transformers, whatever the dtype
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(h.dtype), emb.sin().to(h.dtype)
        for i, layer in enumerate(self.model.layers):
            layer_cache = (cache, i) if cache is not None else None
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                out = checkpoint(layer, h, cos, sin, masks, layer_cache, use_reentrant=False)
            else:
                out = layer(h, cos, sin, masks, layer_cache)
            if i in self._blend_layers:  # MSG depth: identity at m = 0 whatever the block computes
                assert masks is not None and masks.blend is not None  # blend layers exist only with a pending growth
                out = h + masks.blend.to(h.dtype) * (out - h)
            h = out
        h = self.model.norm(h, masks.hidden if masks is not None else None)
        logits: torch.Tensor = self.lm_head(h)
        return logits if logits.dtype == torch.float64 else logits.float()


def _new_prefix(size: int, old: int | None) -> torch.Tensor | None:
    if old is None:
        return None
    flags = torch.zeros(size, dtype=torch.bool, device="cpu")
    flags[old:] = True
    return flags


def new_head_flags(old_heads: int, old_kv: int, heads: int, kv_heads: int) -> torch.Tensor:
    """Which query heads are new after interleaved GQA growth: per KV group, old heads come first."""
    old_rep, rep = old_heads // old_kv, heads // kv_heads
    index = torch.arange(heads, device="cpu")
    group, slot = index // rep, index % rep
    return (group >= old_kv) | (slot >= old_rep)
