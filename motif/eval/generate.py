"""`motif generate`: continue a prompt with a checkpoint, plain or mid-growth, token by token."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from motif.errors import MotifError

HELP = "continue a prompt with a checkpoint (plain or mid-growth), streaming the tokens"
DESCRIPTION = """\
Continue TEXT with CHECKPOINT: a plain Llama or a mid-growth one (MSG masks < 1), loaded and
placed as `motif eval` does it (--device auto: the GPUs if any, split across them when one does
not hold the model; else the CPU). The prompt is framed as training framed documents (the
tokenizer's BOS, then the text); decoding uses the model's KV cache and stops at the end-of-text
token or after --max-new-tokens.

Greedy by default (--temperature 0): the same checkpoint always gives the same continuation, and
a checkpoint grown by LlamaPro or by MSG at m = 0 gives exactly its source's. With --temperature
T > 0 tokens are sampled from softmax(logits / T), reproducibly for a given --seed.

Examples:
  motif generate out/demo/checkpoints/tiny-s2-width/final --prompt "오늘 고양이는"
  motif generate /ckpt/s3-cpt/final --prompt "The capital of Korea is" --max-new-tokens 32 \\
      --tokenizer /models/llama3-70b
  motif generate CKPT --prompt "옛날 옛적에" --temperature 0.8 --seed 3 --json

The text is streamed to stdout as the tokens come. With --json, nothing is streamed: stdout is
one JSON object {checkpoint, prompt, text, tokens, new_tokens, stopped, growth_mask, device,
temperature, seed, seconds, tokens_per_second}. Exit status: 0 done, 2 bad input (nothing loaded).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory (plain or mid-growth)")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="at most N new tokens (default 64)")
    parser.add_argument(
        "--temperature", type=float, default=0.0, metavar="T", help="0: greedy (default); > 0: sample at T"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: CHECKPOINT)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, or a list to split across (cuda:0,cuda:1)")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto", help="auto: bf16 on GPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming the text")


@dataclass
class Continuation:
    """One prompt and what the model wrote after it."""

    prompt: str
    text: str
    tokens: list[int]  # the new token ids
    stopped: str  # "eos" or "length"
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


def prompt_ids(tokenizer, text: str) -> list[int]:
    """The prompt as training framed a document, without the end: [BOS] + ids of the text."""
    ids = tokenizer.encode_batch([text])[0][:-1]  # drop the EOS that closes a training document
    if not ids:
        raise MotifError("--prompt: empty, and the tokenizer has no BOS token to start from; give some text")
    return ids


def continue_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    on_text: Callable[[str], None] | None = None,
) -> Continuation:
    """Continue `prompt` with an `EvalModel`; `on_text` receives each new piece of decoded text."""
    import torch

    from motif.eval.decode import Stops, continue_ids

    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    stops = Stops(ids=frozenset({tokenizer.eos_id}))
    new: list[int] = []
    shown = ""
    t0 = time.perf_counter()
    for token in continue_ids(
        model.llama,
        prompt_ids(tokenizer, prompt),
        max_new_tokens,
        device=model.device,
        temperature=temperature,
        generator=generator,
        stops=stops,
    ):
        new.append(token)
        if on_text is not None:
            text = tokenizer.decode(new)
            if not text.endswith("\ufffd"):  # a character cut between tokens: wait for its last byte
                on_text(text[len(shown) :])
                shown = text
    seconds = time.perf_counter() - t0
    stopped = "eos" if new and new[-1] == tokenizer.eos_id else "length"
    return Continuation(prompt, tokenizer.decode(new), new, stopped, seconds)


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens <= 0:
        raise MotifError(f"--max-new-tokens: expected > 0, got {args.max_new_tokens}")
    if not args.temperature >= 0:  # also refuses nan
        raise MotifError(f"--temperature: expected >= 0, got {args.temperature}")
    from motif.data.tokenizer import Tokenizer
    from motif.eval.command import check_tokenizer, choose_devices
    from motif.eval.loader import load_eval_model
    from motif.model.checkpoint import open_checkpoint

    checkpoint = Path(args.checkpoint).resolve()
    ckpt = open_checkpoint(checkpoint)
    tokenizer_dir = Path(args.tokenizer).resolve() if args.tokenizer else checkpoint
    if not (tokenizer_dir / "tokenizer.json").is_file():
        hint = "" if args.tokenizer else "; pass --tokenizer DIR (the tokenizer the model was trained with)"
        raise MotifError(f"{tokenizer_dir / 'tokenizer.json'}: missing{hint}")
    check_tokenizer(tokenizer_dir, ckpt.args.vocab_size, checkpoint)
    tokenizer = Tokenizer(tokenizer_dir)
    prompt_ids(tokenizer, args.prompt)  # an unusable prompt is refused before the weights are read
    devices, dtype = choose_devices(args.device, args.dtype, ckpt)
    model = load_eval_model(checkpoint, dtype, devices, progress=sys.stderr.isatty() and not args.json)
    stream = None
    if not args.json:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()

        def stream(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

    result = continue_text(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.seed, stream)
    if args.json:
        record = {
            "checkpoint": str(checkpoint),
            **asdict(result),
            "new_tokens": len(result.tokens),
            "growth_mask": model.growth_mask,
            "device": ",".join(devices),
            "temperature": args.temperature,
            "seed": args.seed,
            "tokens_per_second": round(result.tokens_per_second, 2),
        }
        print(json.dumps(record, ensure_ascii=False))
    else:
        print()
        print(
            f"motif generate: {len(result.tokens)} tokens ({result.stopped}), "
            f"{result.tokens_per_second:.1f} tokens/s on {', '.join(devices)} ({dtype})",
            file=sys.stderr,
        )
    return 0
