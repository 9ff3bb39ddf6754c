"""GPU benchmark: a CUDA smoke run of each engine, and bf16 MFU of a ~1B Llama 3 shape on one GPU.

    python -m bench gpu              # or: python -m bench.gpu [--steps N] [--json FILE]

Needs a CUDA GPU; without one it says so and exits 0 (the project never needs a GPU to pass).

* smoke: `motif train` of a small Llama on `device: cuda`, bf16, 1 GPU, with each engine
  (ddp, fsdp, deepspeed): trains, checkpoints, resumes from the checkpoint, writes its output;
* MFU: Llama 3.2 1B's shape (1.24B parameters: hidden 2048, 16 layers, FFN 8192, 32/8 heads,
  vocab 128256, tied embeddings), bf16, sequence 2048, activation checkpointing, `torch.compile` per block, with
  fsdp; the median `motif_mfu` of the steps after warm-up, against the device's dense bf16 peak
  (motif.metrics.flops). Target >= 45% (torchtitan reports 33-39% for 8B on H100).
* simulated beside measured: `motif simulate` of the MFU run's stage, on the peak table entry of
  this GPU (`motif.simulate.devices`, from the device's name: h100, h200, a100, mi250x, mi300x),
  prints memory and step time beside the measurement (the device's peak memory in use during the
  run, polled with nvidia-smi, and the median step time). Reported, never required to pass. The
  simulation runs the step without `torch.compile` (fake tensors), so it charges every
  elementwise operator that compile fuses.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "vocab_size": 2048,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}
ONE_B = {  # Llama 3.2 1B's shape
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}


def _section(name: str, model: dict, engine: str, seq_len: int, micro_batch: int, steps: int, compile: bool) -> dict:
    return {
        "name": name,
        "model": model,
        "output": f"out/{name}",
        "data": {
            "tokenizer": "data/tokenizer",
            "seq_len": seq_len,
            "sources": [
                {"name": "ko", "language": "ko", "weight": 0.5, "path": "data/ko.jsonl"},
                {"name": "en", "language": "en", "weight": 0.5, "path": "data/en.jsonl"},
            ],
        },
        "optim": {"lr": 1.0e-4, "warmup_steps": 2},
        "train": {
            "max_steps": steps,
            "micro_batch_size": micro_batch,
            "precision": "bf16",
            "activation_checkpointing": True,
            "compile": compile,
        },
        "parallel": {"engine": engine, "device": "cuda", "procs_per_node": 1},
        "checkpoint": {"dir": f"ck/{name}", "every_steps": max(1, steps // 2), "keep_last": 2},
    }


def _train(work: Path, section: dict, *args: str) -> subprocess.CompletedProcess:
    stage = work / f"{section['name']}.yaml"
    stage.write_text(yaml.safe_dump({"motif": section}))
    cmd = [sys.executable, "-m", "motif", "train", str(stage), "--metrics-port", "0", "--log-every", "1", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)


def device_kind(name: str) -> str | None:
    """The peak table entry for a GPU's name ("NVIDIA H100 80GB HBM3" -> "h100"), None if it has none."""
    from motif.simulate.devices import DEVICES

    lowered = name.lower().replace(" ", "")
    return next((kind for kind in DEVICES if kind in lowered), None)


def simulated_beside(work: Path, section: dict, measured: dict, kind: str) -> dict:
    """`motif simulate`'s memory and step time for a measured stage, on `kind`'s table entry, beside
    the measurement (`measured`: "step_s", and "peak_memory_bytes" where it was measured)."""
    from motif.plan import resolve_stages
    from motif.simulate.simulate import simulate_stage

    path = work / "simulate" / f"{section['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {**section, "train": {**section["train"], "compile": False}}  # fake tensors do not compile
    path.write_text(yaml.safe_dump({"motif": plain}))
    (shape,) = resolve_stages([path])
    row = simulate_stage(shape, shape.stage, device_kind=kind)
    out = {
        "device_kind": kind,
        "step_s": row["step_seconds"],
        "tokens_per_s": row["tokens_per_second_per_gpu"],
        "mfu": row["mfu"],
        "total_bytes": row["total_bytes"],
        "measured_step_s": measured.get("step_s"),
        "measured_peak_memory_bytes": measured.get("peak_memory_bytes"),
    }
    out["step_error"] = out["step_s"] / out["measured_step_s"] - 1 if out["measured_step_s"] else None
    peak = out["measured_peak_memory_bytes"]
    out["memory_error"] = out["total_bytes"] / peak - 1 if peak else None
    return out


def format_beside(sim: dict) -> str:
    gib = 2**30

    def error(value: float | None) -> str:
        return f"{100 * value:+.0f}%" if value is not None else "not measured"

    measured_mem = sim["measured_peak_memory_bytes"]
    measured_step = sim["measured_step_s"]
    return (
        f"  simulate fsdp, Llama 3.2 1B shape, on the {sim['device_kind']} table entry: memory "
        f"{sim['total_bytes'] / gib:.1f} GiB beside measured "
        f"{f'{measured_mem / gib:.1f} GiB' if measured_mem else '-'} ({error(sim['memory_error'])}); step "
        f"{sim['step_s']:.3f} s beside measured {f'{measured_step:.3f} s' if measured_step else '-'} "
        f"({error(sim['step_error'])}); predicted MFU {100 * sim['mfu']:.1f}% (reported, no target)"
    )


class MemoryPoll:
    """The GPU's peak memory in use while a run lasts, over what was in use before it (nvidia-smi, twice a second)."""

    def __init__(self, index: int = 0):
        self.index, self.peak, self.before = index, 0, self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _used(self) -> int | None:
        query = ["nvidia-smi", f"--id={self.index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        try:
            return int(subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()) * 2**20
        except (OSError, subprocess.CalledProcessError, ValueError):
            return None

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            used = self._used()
            if used is not None:
                self.peak = max(self.peak, used)

    def __enter__(self) -> MemoryPoll:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_bytes(self) -> int | None:
        return self.peak - self.before if self.before is not None and self.peak else None


def main(argv: list[str]) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m bench.gpu")
    parser.add_argument("--steps", type=int, default=20, help="steps of the MFU run (the first 5 are warm-up)")
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences of 2,048 tokens per step")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench" / "gpu.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu benchmark: no CUDA GPU here; nothing measured")
        return 0
    from motif.data.corpus import documents, write_corpus
    from motif.data.tokenizer import train_bpe
    from motif.metrics.jsonl import read
    from motif.model import ModelArgs

    work = Path(tempfile.mkdtemp(prefix="motif-bench-gpu-"))
    write_corpus(work / "data", 2000)
    train_bpe(documents("ko", 2000) + documents("en", 2000), 2048, work / "data" / "tokenizer")
    device = torch.cuda.get_device_name(0)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device, "smoke": {}}
    status = 0
    for engine in ("ddp", "fsdp", "deepspeed"):
        section = _section(f"smoke-{engine}", SMALL, engine, 512, 2, 6, compile=False)
        first = _train(work, section)
        resumed = first.returncode == 0 and _train(work, section, "--resume", f"ck/{section['name']}/step_00000003")
        ok = first.returncode == 0 and resumed and resumed.returncode == 0
        tail = "" if ok else (first.stderr + (resumed.stderr if resumed else ""))[-2000:]
        results["smoke"][engine] = {"ok": ok, "tail": tail}
        print(f"  smoke {engine:<9} {'ok' if ok else 'FAILED'}", flush=True)
        status |= 0 if ok else 1
    section = _section("mfu-1b", ONE_B, "fsdp", 2048, args.micro_batch, args.steps, compile=True)
    with MemoryPoll() as memory:
        done = _train(work, section)
    if done.returncode == 0:
        records = [r for r in read(work / "ck/mfu-1b/metrics.jsonl") if "motif_mfu" in r]
        mfu = statistics.median(r["motif_mfu"] for r in records[5:])
        tps = statistics.median(r["motif_tokens_per_second"] for r in records[5:])
        step_s = statistics.median(r["motif_step_seconds"] for r in records[5:])
        params = ModelArgs(**ONE_B).num_params()
        results["mfu"] = {
            "params": params,
            "mfu": mfu,
            "tokens_per_s": tps,
            "micro_batch": args.micro_batch,
            "step_s": step_s,
            "peak_memory_bytes": memory.peak_bytes,
        }
        print(f"  MFU   fsdp, Llama 3.2 1B shape, bf16, seq 2048: {100 * mfu:.1f}% (target >= 45%), {tps:,.0f} tok/s")
        kind = device_kind(device)
        if kind is None:
            results["simulated"] = {"skipped": f"no peak table entry for {device}"}
            print(f"  simulate: no peak table entry for {device}; not simulated")
        else:
            results["simulated"] = simulated_beside(work, section, results["mfu"], kind)
            print(format_beside(results["simulated"]))
    else:
        results["mfu"] = {"failed": done.stderr[-2000:]}
        print(f"  MFU run FAILED:\n{done.stderr[-2000:]}")
        status = 1
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"gpu benchmark on {device}, {results['date']}; figures: {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
