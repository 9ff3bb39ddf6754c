"""Generation benchmark: greedy decoding with the KV cache against re-running the whole prefix, side by side.

    python -m bench generate        # or: python -m bench.generate [--device cuda] [--json PATH]

A random Llama of a small shape (vocab 8192, hidden 384, 6 layers, GQA 6/2: 16M parameters) is
built in memory; both modes continue the same prompt of --prompt tokens by --new tokens with
`motif.eval.decode.continue_ids`, after one warm-up run each, then alternately for --rounds rounds
(default 3), keeping each mode's best time, so a burst of load from other work on a shared machine
hits both modes alike rather than one:

* cache: the prompt in one forward pass, then one pass of length 1 per new token (what `motif
  generate` and `motif eval`'s generative tasks do),
* prefix: the whole sequence again for every new token (no cache).

It prints tokens/s of each, the ratio and the load average over the run, and checks both wrote
the same tokens. With a GPU
(`--device cuda`, the default when one is visible) the same runs happen there in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(
    vocab_size=8192,
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=6,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)


def _warm_up(model, prompt: list[int], device: str) -> None:
    from motif.eval.decode import complete

    for cache in (True, False):  # allocator, kernels
        complete(model, prompt, 4, device=device, cache=cache)


def _timed(model, prompt: list[int], new: int, device: str, cache: bool) -> tuple[list[int], float]:
    import torch

    from motif.eval.decode import complete

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tokens = complete(model, prompt, new, device=device, cache=cache)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - t0


def main(argv: list[str]) -> int:
    import torch

    from motif.model import Llama, ModelArgs

    parser = argparse.ArgumentParser(prog="python -m bench.generate")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens (default 64)")
    parser.add_argument("--new", type=int, default=48, help="new tokens (default 48)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, best time kept (default 3)")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench" / "generate.json"))
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    margs = ModelArgs(**SHAPE, torch_dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    torch.manual_seed(0)
    model = Llama(margs)
    model.init_weights(seed=0)
    model = model.to(device=args.device, dtype=dtype).eval()
    model.init_buffers(args.device)
    prompt = torch.randint(3, SHAPE["vocab_size"], (args.prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    load_before = os.getloadavg()[0]
    _warm_up(model, prompt, args.device)
    t_cache = t_prefix = float("inf")
    for _ in range(max(1, args.rounds)):
        cached, t = _timed(model, prompt, args.new, args.device, cache=True)
        t_cache = min(t_cache, t)
        rerun, t = _timed(model, prompt, args.new, args.device, cache=False)
        t_prefix = min(t_prefix, t)
    same = cached == rerun
    load_after = os.getloadavg()[0]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        "params": margs.num_params(),
        "dtype": str(dtype).removeprefix("torch."),
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "rounds": max(1, args.rounds),
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        "cache_tokens_per_s": args.new / t_cache,
        "prefix_tokens_per_s": args.new / t_prefix,
        "speedup": t_prefix / t_cache,
        "same_tokens": same,
    }
    print(
        f"  generate {result['params'] / 1e6:.0f}M params, {result['dtype']} on {result['device']}, "
        f"prompt {args.prompt} + {args.new} new tokens, greedy, best of {result['rounds']} alternating rounds"
    )
    print(f"  with the KV cache      {result['cache_tokens_per_s']:10.1f} tokens/s")
    print(f"  re-running the prefix  {result['prefix_tokens_per_s']:10.1f} tokens/s")
    print(f"  cache speed-up         {result['speedup']:10.2f}x; same tokens: {'yes' if same else 'NO'}")
    print(f"  load average (1 min)   {load_before:.2f} before, {load_after:.2f} after")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    # bf16 rounding may break a near-tie differently between the two; in fp32 they must agree.
    return 0 if same or dtype == torch.bfloat16 else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
