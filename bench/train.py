"""Training benchmark, side by side in one run, on two model sizes:

    python -m bench train            # or: python -m bench.train [--size tiny|small] [--steps N] [--json FILE]

`tiny` is the tiny recipe's stage 0 (1.3M parameters, 1,024 tokens per step: the demo's model, where
per-op overheads weigh as much as the matrix products); `small` keeps that stage's data but is a
6.6M-parameter Llama (hidden 256, 8 layers, 2,048 tokens per step), where matrix products dominate
the step and MFU says how close it gets to the machine's GEMM peak (fewer rounds: a step is ~1 s).

* train step: motif's `Trainer.train_step` (DDP engine, one process) against a plain transformers
  `LlamaForCausalLM` + AdamW loop on the same batches; steps alternate between the two and the
  medians of the per-step times are compared (target: motif >= 1.0x);
* MFU of motif's step against this machine's fp32 GEMM peak, measured in the same run;
* checkpoint save and load time per byte against `cp -r` and `cat` of the same files, and how long
  training waits for an asynchronous checkpoint (`checkpoint.async_mode: async`) against a save;
* data pipeline tokens/s against the trainer's consumption (target >= 50x);
* exporter + JSONL on against off, alternating steps (target <= 1% overhead), and the cost of one
  `log()` call as a share of a step (the overhead itself, without the step-to-step noise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "jobs" / "tiny" / "stage0-base.yaml"


# Overrides of the tiny stage 0 section per benchmark size.
SIZES = {
    "tiny": {},
    "small": {
        "model": {
            "vocab_size": 2048,
            "hidden_size": 256,
            "intermediate_size": 704,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
        },
        "seq_len": 256,
        "rounds": 2,
        "steps": 4,
    },
}


def _stage_file(workdir: Path, size: str) -> Path:
    section = yaml.safe_load(STAGE.read_text())["motif"]
    override = SIZES[size]
    if "model" in override:
        section["model"] = dict(override["model"])
        section["data"]["seq_len"] = override["seq_len"]
    section["parallel"] = {"engine": "ddp", "device": "cpu", "procs_per_node": 1}
    section["train"]["deterministic"] = False
    section.pop("eval", None)  # the step is measured, not the held-out scoring the demo stage adds
    path = workdir / "stage.yaml"
    path.write_text(yaml.safe_dump({"motif": section}))
    return path


def _prepare(workdir: Path) -> None:
    from motif.data.corpus import documents, write_corpus
    from motif.data.tokenizer import train_bpe

    write_corpus(workdir / "data", 3000)
    train_bpe(documents("ko", 3000) + documents("en", 3000), 2048, workdir / "data" / "tokenizer")


def _hf_model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        max_position_embeddings=args.max_position_embeddings,
        rope_theta=args.rope_theta,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).train()


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train")
    parser.add_argument("--rounds", type=int, default=4, help="passes over the batches per comparison")
    parser.add_argument("--steps", type=int, default=8, help="distinct batches")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the trainer runs 1 per process)")
    parser.add_argument("--size", choices=[*SIZES, "all"], default="all", help="model size (default: all)")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench" / "train.json"))
    args = parser.parse_args(argv)
    sizes = list(SIZES) if args.size == "all" else [args.size]
    results = {size: _bench(size, args) for size in sizes}
    for size in sizes:
        _report(results[size])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nfigures: {args.json}")
    return 0


def _bench(size: str, args: argparse.Namespace) -> dict:
    args = argparse.Namespace(**{**vars(args), **{k: v for k, v in SIZES[size].items() if k in ("rounds", "steps")}})

    import torch
    import torch.nn.functional as F

    from motif.config import load_stage
    from motif.data.mixture import Mixture
    from motif.metrics import names
    from motif.metrics.flops import measure_gemm_flops
    from motif.metrics.jsonl import JsonlBackend
    from motif.metrics.logger import MetricLogger
    from motif.metrics.prometheus import PrometheusBackend
    from motif.train import dist
    from motif.train.trainer import RunOptions, Trainer

    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    results: dict = {"size": size, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": threads}
    workdir = Path(tempfile.mkdtemp(prefix="motif-bench-train-"))
    cwd = os.getcwd()
    try:
        os.chdir(workdir)
        _prepare(workdir)
        stage = load_stage(_stage_file(workdir, size))
        world = dist.init("cpu", 600)
        trainer = Trainer(stage, RunOptions(resume="none"), world, MetricLogger([]))
        trainer.setup()
        t = stage.train
        batches = [[trainer.data.next_batch(t.micro_batch_size)] for _ in range(args.steps)]
        tokens_per_step = t.micro_batch_size * stage.data.seq_len

        # ---- train step: motif vs transformers, alternating blocks ----------------------------------
        hf = _hf_model(trainer.model.args)
        opt = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)

        def hf_step(batch):
            logits = hf(batch.inputs).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        # Step by step, alternating, so both see the same machine load; medians of the per-step times.
        motif_times, hf_times = [], []
        for b in batches[:2]:  # warm-up both
            trainer.train_step(b, 1e-3)
            hf_step(b[0])
        for _ in range(args.rounds):
            for b in batches:
                motif_times += _timed(lambda b=b: trainer.train_step(b, 1e-3), 1)
                hf_times += _timed(lambda b=b: hf_step(b[0]), 1)
        motif_step = statistics.median(motif_times)
        hf_step_s = statistics.median(hf_times)
        peak = max(measure_gemm_flops(512, 0.5), measure_gemm_flops(1024, 0.5))
        flops = trainer.model.args.flops_per_token(stage.data.seq_len) * tokens_per_step
        results["train_step"] = {
            "params": trainer.model.args.num_params(),
            "tokens_per_step": tokens_per_step,
            "motif_s": motif_step,
            "hf_s": hf_step_s,
            "motif_tokens_per_s": tokens_per_step / motif_step,
            "hf_tokens_per_s": tokens_per_step / hf_step_s,
            "speedup": hf_step_s / motif_step,
            "gemm_peak_flops": peak,
            "motif_mfu": flops / motif_step / peak,
            "hf_mfu": flops / hf_step_s / peak,
        }

        # ---- exporter + JSONL on vs off ---------------------------------------------------------------
        prom = PrometheusBackend()
        prom.serve(0, addr="127.0.0.1")
        on = MetricLogger([prom, JsonlBackend(workdir / "bench.jsonl")])
        off = MetricLogger([])
        step = [0]

        def run(logger, blocks):
            for b in blocks:
                stats = trainer.train_step(b, 1e-3)
                step[0] += 1
                logger.log(
                    {
                        names.STEP.name: step[0],
                        names.LOSS.name: {"all": stats.loss, **stats.loss_by_language},
                        names.TOKENS.name: {k: step[0] * v for k, v in stats.tokens_by_language.items()},
                        names.LEARNING_RATE.name: 1e-3,
                        names.GRAD_NORM.name: stats.grad_norm,
                        names.MFU.name: 0.1,
                        names.STEP_SECONDS.name: 0.1,
                    },
                    step[0],
                )

        on_times, off_times = [], []
        for _ in range(args.rounds):
            for b in batches:
                off_times += _timed(lambda b=b: run(off, [b]), 1)
                on_times += _timed(lambda b=b: run(on, [b]), 1)
        prom.stop()
        log_cost = statistics.median(_timed(lambda: on.log({names.STEP.name: 1, names.MFU.name: 0.1}, 1), 2000))
        results["exporter"] = {
            "on_s": statistics.median(on_times),
            "off_s": statistics.median(off_times),
            "overhead": statistics.median(on_times) / statistics.median(off_times) - 1,
            "log_call_s": log_cost,
            "log_call_share_of_step": log_cost / motif_step,
        }

        # ---- data pipeline: slices of pipeline work alternate with train steps (same machine load) -------
        mixture = Mixture.from_config(stage.data)
        mixture.next_batch(t.micro_batch_size)
        data_rates, step_rates = [], []
        for i in range(3 * args.rounds):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 0.25:
                n += mixture.next_batch(t.micro_batch_size).targets.numel()
            data_rates.append(n / (time.perf_counter() - t0))
            b = batches[i % len(batches)]
            step_rates.append(tokens_per_step / _timed(lambda b=b: trainer.train_step(b, 1e-3), 1)[0])
        data_tps, step_tps = statistics.median(data_rates), statistics.median(step_rates)
        results["data"] = {"tokens_per_s": data_tps, "trainer_tokens_per_s": step_tps, "ratio": data_tps / step_tps}

        # ---- checkpoint I/O vs cp / cat ---------------------------------------------------------------
        saves, loads, cps, cats = [], [], [], []
        for i in range(5):
            t0 = time.perf_counter()
            path = trainer.save_checkpoint()
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            trainer.checkpoints.load(path)  # what a resume reads: every part, the checksums checked
            loads.append(time.perf_counter() - t0)
            dst = workdir / f"copy{i}"
            t0 = time.perf_counter()
            subprocess.run(["cp", "-r", str(path), str(dst)], check=True)
            subprocess.run(["sync", "-f", str(dst)], check=True)
            cps.append(time.perf_counter() - t0)
            files = [str(f) for f in sorted(path.rglob("*")) if f.is_file()]
            t0 = time.perf_counter()
            subprocess.run(["cat", *files], check=True, stdout=subprocess.DEVNULL)
            cats.append(time.perf_counter() - t0)
            trainer.state.step += 1
        nbytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        # An asynchronous checkpoint: how long training waits for it (the copy to host memory),
        # and how long it takes to reach the disk while nothing else runs.
        stalls, writes = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            trainer.save_checkpoint(asynchronous=True)
            stalls.append(time.perf_counter() - t0)
            trainer.finish_checkpoint()
            writes.append(time.perf_counter() - t0)
            trainer.state.step += 1
        results["checkpoint"] = {
            "async_stall_s": statistics.median(stalls),
            "async_write_s": statistics.median(writes),
            "async_stall_vs_save": statistics.median(stalls) / statistics.median(saves),
            "bytes": nbytes,
            "save_s": statistics.median(saves),
            "cp_sync_s": statistics.median(cps),
            "load_s": statistics.median(loads),
            "cat_s": statistics.median(cats),
            "save_vs_cp": statistics.median(saves) / statistics.median(cps),
            "load_vs_cat": statistics.median(loads) / statistics.median(cats),
        }
        trainer.close()
    finally:
        os.chdir(cwd)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _report(r: dict) -> None:
    s, e, d, c = r["train_step"], r["exporter"], r["data"], r["checkpoint"]
    print(
        f"training benchmark [{r['size']}], {r['date']}, {r['threads']} threads, {s['params']:,} parameters, "
        f"{s['tokens_per_step']} tokens/step, fp32 CPU"
    )
    print(
        f"  train step   motif {s['motif_s'] * 1e3:7.1f} ms ({s['motif_tokens_per_s']:,.0f} tok/s)   "
        f"transformers+AdamW {s['hf_s'] * 1e3:7.1f} ms ({s['hf_tokens_per_s']:,.0f} tok/s)   "
        f"speedup {s['speedup']:.2f}x (target >= 1.0)"
    )
    print(
        f"  MFU          motif {100 * s['motif_mfu']:.1f}%   transformers {100 * s['hf_mfu']:.1f}%   "
        f"of the fp32 GEMM peak measured now: {s['gemm_peak_flops'] / 1e9:.1f} GFLOP/s"
    )
    print(
        f"  exporter     on {e['on_s'] * 1e3:.1f} ms/step, off {e['off_s'] * 1e3:.1f} ms/step: "
        f"{100 * e['overhead']:+.2f}% (target <= 1%); one log() call {e['log_call_s'] * 1e6:.0f} us = "
        f"{100 * e['log_call_share_of_step']:.3f}% of a step"
    )
    print(
        f"  data         {d['tokens_per_s']:,.0f} tok/s vs the trainer's {d['trainer_tokens_per_s']:,.0f}: "
        f"{d['ratio']:.0f}x (target >= 50x)"
    )
    print(
        f"  checkpoint   {c['bytes'] / 1e6:.1f} MB: save {c['save_s'] * 1e3:.0f} ms vs cp -r + sync "
        f"{c['cp_sync_s'] * 1e3:.0f} ms ({c['save_vs_cp']:.2f}x); load {c['load_s'] * 1e3:.0f} ms vs cat "
        f"{c['cat_s'] * 1e3:.0f} ms ({c['load_vs_cat']:.2f}x)"
    )
    print(
        f"  async ckpt   training waits {c['async_stall_s'] * 1e3:.0f} ms ({c['async_stall_vs_save']:.2f}x the "
        f"synchronous save), written in {c['async_write_s'] * 1e3:.0f} ms (checkpoint.async_mode: async)"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
