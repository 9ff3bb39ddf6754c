"""`motif demo`: the whole growth pipeline on a tiny model, on CPU, in a few minutes.

It builds a small bilingual corpus and a BPE tokenizer (no download), then runs the stages of
`jobs/tiny/` with the cluster's own commands: `torchrun -m motif train` with 2 processes per stage
(rank 0 grows the checkpoint when a stage grows). The out dir is the working directory of every
stage, so the stage files' relative paths land in it. At the end: a table per stage, a loss plot
with the growth events marked, and a check that transformers loads the final checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HELP = "Run the growth pipeline on a tiny model on CPU: corpus, tokenizer, stage 0 -> LlamaPro -> MSG"
DESCRIPTION = __doc__

ROOT = Path(__file__).resolve().parents[1]
DOCS_PER_LANGUAGE = 3000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    parser.add_argument("--stages", default=str(ROOT / "jobs" / "tiny"), help="directory of stage files")
    parser.add_argument("--nproc", type=int, default=2, help="processes per stage (torchrun; default 2)")
    parser.add_argument("--max-steps", type=int, help="cap every stage at N steps (quick runs)")
    parser.add_argument(
        "--metrics-port", type=int, help="exporter port (default: the stage files' motif.metrics.port; 0: free)"
    )
    parser.add_argument("--keep", action="store_true", help="keep finished stages of an earlier run")


@dataclass(frozen=True)
class DemoRequest:
    """What `motif demo` was asked to do."""

    out: str = "out/demo"
    stages: str = str(ROOT / "jobs" / "tiny")
    nproc: int = 2
    max_steps: int | None = None
    metrics_port: int | None = None
    keep: bool = False


def run(args: argparse.Namespace) -> int:
    from motif.request import from_namespace

    return demo(from_namespace(DemoRequest, args))


def demo(args: DemoRequest) -> int:
    from motif.config import load_stage
    from motif.errors import MotifError
    from motif.eval import demo as eval_demo
    from motif.mix import demo as mix_demo

    out = Path(args.out).resolve()
    stage_files = sorted(Path(args.stages).glob("*.yaml"))
    if not stage_files:
        raise MotifError(f"{args.stages}: no stage files")
    stages = [(f.resolve(), load_stage(f)) for f in stage_files]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare_data(out, stages[0][1])
    eval_demo.prepare(out)  # tiny local benchmark tasks and held-out sets (read by training and motif eval)
    for _, stage in stages:
        if not args.keep:
            for d in (stage.checkpoint.dir, stage.output, stage.growth.output if stage.growth else None):
                if d:
                    shutil.rmtree(out / d, ignore_errors=True)
    for path, stage in stages:
        if args.keep and (out / stage.output / "config.json").exists():
            print(f"== {stage.name}: done in an earlier run ({stage.output})", flush=True)
            continue
        train_stage(out, path, stage, args)
    rows = summarize(out, stages)
    print_table(rows)
    plot = plot_loss(out, stages, rows)
    print(f"\nloss plot: {plot}")
    eval_demo.print_continuations(out, stages)  # one Korean, one English continuation per checkpoint
    check_transformers(out / stages[-1][1].output, out / stages[0][1].data.tokenizer)
    mix_demo.run_sweep_demo(
        out, stages[-1][0], args.max_steps, args.keep
    )  # 5 proxies: a fitted, validated Korean share
    eval_demo.report(out, [path for path, _ in stages])  # motif eval --stage per stage: the demo ends with its table
    print(f"\ndemo done in {time.perf_counter() - t0:.0f}s; final checkpoint: {out / stages[-1][1].output}")
    return 0


# ---- data --------------------------------------------------------------------------------------


def prepare_data(out: Path, stage) -> None:
    from motif.data.corpus import documents, write_corpus
    from motif.data.tokenizer import Tokenizer, train_bpe

    tokenizer_dir = out / stage.data.tokenizer
    vocab = stage.model.vocab_size if stage.model else 2048
    if (tokenizer_dir / "tokenizer.json").exists() and Tokenizer(tokenizer_dir).vocab_size == vocab:
        print(f"== data: corpus and tokenizer already in {out / 'data'}", flush=True)
        return
    t = time.perf_counter()
    paths = write_corpus(out / "data", DOCS_PER_LANGUAGE)
    texts = documents("ko", DOCS_PER_LANGUAGE) + documents("en", DOCS_PER_LANGUAGE)
    train_bpe(texts, vocab, tokenizer_dir)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in paths.values())
    print(
        f"== data: {2 * DOCS_PER_LANGUAGE} documents ({sizes}), BPE tokenizer vocab {vocab} "
        f"in {time.perf_counter() - t:.1f}s",
        flush=True,
    )


# ---- training ------------------------------------------------------------------------------------


def train_stage(out: Path, stage_file: Path, stage, args: DemoRequest) -> None:
    from motif.errors import MotifError
    from motif.launch import train_argv

    extra = ["--resume", "auto", "--log-every", "20"]
    if args.max_steps:
        extra += ["--max-steps", str(args.max_steps)]
    if args.metrics_port is not None:
        extra += ["--metrics-port", str(args.metrics_port)]
    argv = train_argv(str(stage_file), *extra)
    if args.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}", *argv]
    else:
        cmd = [sys.executable, *argv]
    growth = ""
    if stage.growth:
        g = stage.growth
        growth = f" (grows: layers {g.layers}, {g.depth_method})" if g.layers else " (grows: MSG width)"
    how = f"torchrun, {args.nproc} processes" if args.nproc > 1 else "1 process"
    print(f"\n== {stage.name}{growth}: motif train, {how}, from {out}", flush=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("LOGLEVEL", "WARNING")  # torchrun's own chatter
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if _interesting(line):
            print("   " + line.rstrip().split(" INFO ", 1)[-1], flush=True)
    if proc.wait() != 0:
        raise MotifError(f"{stage_file}: motif train failed with status {proc.returncode} (see the lines above)")
    print(f"   {stage.name} finished in {time.perf_counter() - t:.0f}s", flush=True)


def _interesting(line: str) -> bool:
    keys = (
        "metrics at",
        "step ",
        "growth check",
        "growth masks",
        "freeze:",
        "optimizer:",
        "done:",
        "Error",
        "error",
        "grow",
        "resumed",
    )
    return any(k in line for k in keys) and "Warning" not in line


# ---- report --------------------------------------------------------------------------------------


def summarize(out: Path, stages) -> list[dict]:
    from motif.metrics.jsonl import read
    from motif.model.checkpoint import read_args

    rows = []
    for _, stage in stages:
        everything = read(_jsonl(out, stage))
        records = [r for r in everything if "motif_loss" in r]
        last = records[-10:]
        growth = next((r["motif_growth_loss"] for r in everything if "motif_growth_loss" in r), None)
        by_lang = {}
        for lang in sorted(records[-1]["motif_loss"]):
            if lang != "all":
                by_lang[lang] = statistics.mean(r["motif_loss"][lang] for r in last if lang in r["motif_loss"])
        rows.append(
            {
                "stage": stage.name,
                "params": read_args(out / stage.output).num_params(),
                "steps": records[-1]["step"],
                "tokens": sum(records[-1]["motif_tokens_total"].values()),
                "tokens_per_s": statistics.median(r["motif_tokens_per_second"] for r in records[1:] or records),
                "before": growth["before"] if growth else None,
                "after": growth["after"] if growth else None,
                "final": statistics.mean(r["motif_loss"]["all"] for r in last),
                "by_language": by_lang,
                "records": records,
            }
        )
    return rows


def _jsonl(out: Path, stage) -> Path:
    return out / (stage.metrics.jsonl or str(Path(stage.checkpoint.dir) / "metrics.jsonl"))


def print_table(rows: list[dict]) -> None:
    langs = sorted({k for r in rows for k in r["by_language"]})
    head = [
        "stage",
        "params",
        "steps",
        "tokens",
        "tokens/s",
        "loss before growth",
        "loss after growth",
        "final loss",
        *[f"final {lang}" for lang in langs],
    ]
    table = [head]
    for r in rows:
        table.append(
            [
                r["stage"],
                f"{r['params']:,}",
                str(r["steps"]),
                f"{r['tokens']:,}",
                f"{r['tokens_per_s']:,.0f}",
                "-" if r["before"] is None else f"{r['before']:.4f}",
                "-" if r["after"] is None else f"{r['after']:.4f}",
                f"{r['final']:.4f}",
                *[f"{r['by_language'].get(lang, float('nan')):.4f}" for lang in langs],
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    print()
    for i, row in enumerate(table):
        print(
            "  ".join(
                cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


def plot_loss(out: Path, stages, rows: list[dict]) -> Path:
    """Loss across the stages: the whole run on top, the stages around the growth events below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (full, zoom) = plt.subplots(2, 1, figsize=(10, 8), dpi=110, gridspec_kw={"height_ratios": [1, 1.6]})
    colors = {"all": "black", "ko": "tab:red", "en": "tab:blue"}
    names = {"all": "all", "ko": "Korean (ko)", "en": "English (en)"}
    offset, first_growth, zoom_values = 0, None, []
    for (_, stage), row in zip(stages, rows, strict=True):
        records = row["records"]
        steps = [offset + r["step"] for r in records]
        for lang in ("ko", "en", "all"):
            values = [r["motif_loss"].get(lang) for r in records]
            if any(v is None for v in values):
                continue
            smooth = _smooth(values)
            style = {"color": colors[lang], "lw": 1.8 if lang == "all" else 1.0, "alpha": 1.0 if lang == "all" else 0.8}
            label = names[lang] if offset == 0 else None
            full.plot(steps, smooth, label=label, **style)
            zoom.plot(steps, smooth, label=label, **style)
            if stage.growth or offset:
                zoom_values += smooth
        if stage.growth:
            first_growth = offset if first_growth is None else first_growth
            kind = f"LlamaPro -> {stage.growth.layers} layers" if stage.growth.layers else "MSG width"
            for ax in (full, zoom):
                ax.axvline(offset, color="tab:green", ls="--", lw=1.2)
            zoom.annotate(
                f"growth: {kind}\nloss {row['before']:.4f} -> {row['after']:.4f}",
                (offset, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(5, -6),
                textcoords="offset points",
                va="top",
                fontsize=9,
                color="darkgreen",
            )
            if stage.growth.ramp_steps:
                zoom.axvspan(
                    offset,
                    offset + stage.growth.ramp_steps,
                    color="tab:green",
                    alpha=0.08,
                    label="MSG mask ramp 0 -> 1",
                )
        for ax in (full, zoom):
            ax.text(
                offset + row["steps"] / 2,
                0.03,
                stage.name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                fontsize=9,
                color="dimgray",
                clip_on=True,
            )
        offset += row["steps"]
    if first_growth is not None and zoom_values:
        lo, hi = min(zoom_values), max(zoom_values)
        pad = 0.15 * (hi - lo) + 0.02
        zoom.set_xlim(first_growth - rows[0]["steps"] * 0.4, offset)
        zoom.set_ylim(lo - pad, hi + 2.5 * pad)
    full.set_title("motif demo: a tiny Llama trained, grown by LlamaPro (depth), then by MSG (width)")
    full.set_ylabel("loss (whole run)")
    zoom.set_ylabel("loss around the growth events")
    zoom.set_xlabel("optimizer step, all stages (loss: cross-entropy per token, 5-step mean)")
    for ax in (full, zoom):
        ax.grid(alpha=0.3)
    full.legend(loc="upper right")
    zoom.legend(loc="lower left", fontsize=9)
    fig.tight_layout()
    path = out / "loss.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _smooth(values: list[float], k: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k + 1) : i + 1]
        out.append(sum(window) / len(window))
    return out


def check_transformers(final: Path, tokenizer: Path) -> None:
    import torch
    import transformers
    from transformers import AutoTokenizer, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()

    import motif

    ours = motif.load(final)
    hf = LlamaForCausalLM.from_pretrained(str(final), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    ids = tok("오늘 고양이는 빨간 사과를 봅니다. The cat sees a red apple", return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    print(f"\ntransformers LlamaForCausalLM loads {final}: max |logits difference| vs motif = {diff:.2e}")
    info = json.loads((final / "config.json").read_text())
    print(
        f"   config: {info['num_hidden_layers']} layers, hidden {info['hidden_size']}, "
        f"{info['num_attention_heads']} heads / {info['num_key_value_heads']} KV heads, FFN {info['intermediate_size']}"
    )
