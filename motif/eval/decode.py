"""Continuing a token sequence with a motif `Llama`: greedy or seeded sampling, with its KV cache.

Why it is built this way:

* **One sequence, one cache.** The prompt is read in one forward pass that fills a `KVCache`; each
  new token is then one forward pass of length 1 over that cache. The model takes no padding
  mask, so a batch of prompts of different lengths is decoded one prompt at a time (what
  `MotifLM` does for lm-eval's batches): no padded position can leak into a score, and a
  mid-growth model (MSG masks) or a split one (blocks on several GPUs, the cache of each block
  on its device) decodes with no code of its own.
* **Stops as lm-eval's `hf` model stops.** A sequence ends at an end-of-text id, at
  `max_new_tokens`, or as soon as its decoded text contains a stop string (lm-eval's `until`).
  The caller cuts the text at the first stop string, so a stop found late changes nothing.
* **The whole prefix, on request.** `cache=False` re-runs the whole sequence for every token:
  the same tokens, and the reference `make bench` measures the cache against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from motif.model.model import KVCache, Llama


@dataclass(frozen=True)
class Stops:
    """When a continuation ends, besides its length: an id, or a string in its decoded text."""

    ids: frozenset[int] = frozenset()
    texts: tuple[str, ...] = ()
    decode: Callable[[list[int]], str] | None = field(default=None, compare=False)

    def reached(self, new: list[int]) -> bool:
        if new and new[-1] in self.ids:
            return True
        if not self.texts or self.decode is None:
            return False
        text = self.decode(new)
        return any(s and s in text for s in self.texts)


def next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """Argmax at temperature 0 (ties: the lowest id, as torch and transformers); else one sample of softmax(l / T)."""
    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


@torch.inference_mode()
def continue_ids(
    llama: Llama,
    prompt: Iterable[int],
    max_new_tokens: int,
    *,
    device: str | torch.device = "cpu",
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    stops: Stops = Stops(),
    cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one at a time, each as soon as it is chosen.

    Args:
        device: where the token ids go (a split model's input device).
        temperature: 0 is greedy; above 0, sampling from `generator` (the global RNG when None).
        stops: ends the sequence after the token that reaches one (that token is yielded).
        cache: False re-runs the whole sequence per token (slower; the same tokens up to rounding).
    """
    ids = list(prompt)
    if not ids:
        raise ValueError("cannot continue an empty prompt: give at least one token (a BOS id)")
    if max_new_tokens <= 0:
        return
    kv = KVCache(len(llama.model.layers)) if cache else None
    step = torch.tensor([ids], dtype=torch.long, device=device)
    new: list[int] = []
    while True:
        logits = llama(step, kv)[0, -1]
        token = next_token(logits, temperature, generator)
        new.append(token)
        yield token
        if len(new) >= max_new_tokens or stops.reached(new):
            return
        if kv is not None:
            step = torch.tensor([[token]], dtype=torch.long, device=device)
        else:
            step = torch.tensor([ids + new], dtype=torch.long, device=device)


def complete(llama: Llama, prompt: Iterable[int], max_new_tokens: int, **kwargs) -> list[int]:
    """All the new ids of `continue_ids` at once."""
    return list(continue_ids(llama, prompt, max_new_tokens, **kwargs))
