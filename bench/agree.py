"""Plan against simulation at full size: `motif plan` beside `motif simulate` for large shapes.

    python -m bench agree                      # or: python -m bench.agree [--shapes 8b-8k,70b-32k,102b]

For each shape, the per-GPU memory `motif plan` predicts and the peak `motif simulate` finds (the
fsdp engine's own step on fake tensors), both with the same allowance, and the plan's error. The
shapes: Llama 3 8B on 8 GPUs and Llama 3 70B on 64 GPUs, from scratch, at 8k and 32k tokens
(micro-batch 1, 2 micro-batches: the second holds the first one's gradients), and every stage of
jobs/llama3-motif-102b as the recipe configures it. Target: within 10%. The 102B stages take a few
minutes each on 2 cores (fake tensors: the time goes to the operators' count, not their size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
RECIPE = ROOT / "jobs" / "llama3-motif-102b"

# Llama 3's published shapes (config.json of meta-llama/Meta-Llama-3-8B and -70B).
LLAMA3 = {
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32},
    "70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64},
}
WORLD = {"8b": 8, "70b": 64}
SHAPES = ["8b-8k", "8b-32k", "70b-8k", "70b-32k", "102b"]


def llama3_stage(size: str, seq_len: int) -> dict:
    """The 102B recipe's last stage file, turned into a from-scratch Llama 3 `size` at `seq_len`."""
    doc = yaml.safe_load((RECIPE / "stage3-cpt.yaml").read_text())
    m = doc["motif"]
    m.pop("input")
    m["name"] = f"llama3-{size}-{seq_len // 1024}k"
    m["model"] = {
        **LLAMA3[size],
        "vocab_size": 128256,
        "num_key_value_heads": 8,
        "max_position_embeddings": max(seq_len, 8192),
    }
    m["data"]["seq_len"] = seq_len
    m["train"].update(micro_batch_size=1, grad_accum_steps=2)
    m["parallel"].update(nodes=WORLD[size] // 8, procs_per_node=8)
    return doc


def compare(files: list[Path]) -> list[dict]:
    """Plan and simulation of each stage of `files` (run in this order: later ones grow earlier ones)."""
    from motif.plan import memory_per_gpu, resolve_stages
    from motif.simulate.simulate import simulate_stage

    rows = []
    for shape in resolve_stages(files):
        planned = memory_per_gpu(
            shape.after, shape.trainable, shape.stage, shape.largest_trainable_group(), shape.first_trained_layer()
        )
        t0 = time.perf_counter()
        simulated = simulate_stage(shape, shape.stage)
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "stage": shape.stage.name,
                "world_size": simulated["world_size"],
                "seq_len": simulated["seq_len"],
                "layout": f"{simulated['micro_batch_size']} x {simulated['micro_batches']}",
                "simulated": simulated["total_bytes"],
                "planned": planned.total,
                "error": planned.total / simulated["total_bytes"] - 1,
                "simulated_at": simulated["peak_at"],
                "planned_at": planned.peak_phase,
                "seconds": seconds,
            }
        )
        print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    return (
        f"{r['stage']:<16} {r['world_size']:>4} {r['seq_len']:>6} {r['layout']:>6} {r['simulated'] / GIB:>9.1f}G "
        f"{r['planned'] / GIB:>8.1f}G {100 * r['error']:>+6.1f}%  {r['seconds']:>5.0f}s  "
        f"{r['simulated_at']}  |  plan: {r['planned_at']}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agree", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        print(f"--shapes: unknown shape {unknown[0]} (expected one of {', '.join(SHAPES)})", file=sys.stderr)
        return 2
    print(f"{'stage':<16} {'GPUs':>4} {'tokens':>6} {'mbs':>6} {'simulate':>10} {'plan':>9} {'error':>7}  time")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in shapes:
            if name == "102b":
                from motif.plan import stage_files

                rows += compare(stage_files(RECIPE))
                continue
            size, tokens = name.split("-")
            path = Path(tmp, f"{name}.yaml")
            path.write_text(yaml.safe_dump(llama3_stage(size, int(tokens.rstrip("k")) * 1024)))
            rows += compare([path])
    worst = max(abs(r["error"]) for r in rows)
    print(f"Memory per GPU with the allowance; worst plan error {100 * worst:.1f}% (target 10%).")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
