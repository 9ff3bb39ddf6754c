"""`motif eval`: benchmarks through lm-evaluation-harness and held-out bits per byte, for one checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from motif.errors import MotifError

HELP = "evaluate a checkpoint: lm-eval benchmarks (KMMLU, KoBEST, MMLU, ...) and held-out bits per byte"
DESCRIPTION = """\
Evaluate CHECKPOINT (plain Llama or mid-growth, MSG masks < 1) with EleutherAI's
lm-evaluation-harness, or the final output of a stage file (--stage, its motif.eval section:
tasks, few-shot, local data directory, held-out sets, Pushgateway).

Log-likelihood tasks (multiple choice, perplexity) and generative ones (generate_until:
kmmlu_direct, the Llama-3-Motif report's KMMLU metric, kmmlu_direct_hard, hrm8k) both run; a
generative task is decoded greedily with the model's KV cache, one prompt at a time, until its
stop strings, the end-of-text token or its max_gen_toks.

Examples:
  motif eval /ckpt/s3-cpt/final --tasks kmmlu,kobest,mmlu --num-fewshot 5 --tokenizer /models/llama3-70b
  motif eval /ckpt/s3-cpt/final --tasks kmmlu_direct --num-fewshot 5 --tokenizer /models/llama3-70b
  motif eval out/demo/checkpoints/tiny-s0-base/final --tasks demo_kmmlu,demo_mmlu \\
      --include-path out/demo/eval/tasks --tokenizer out/demo/data/tokenizer --json
  motif eval --stage jobs/llama3-motif-102b/stage3-cpt.yaml

Writes lm-eval's results JSON (lm-eval-results.json) and summary.json into --out (default
CHECKPOINT/eval, or motif.eval.out / <motif.output>/eval with --stage). A finished result for the
same request on the same checkpoint is reused, not recomputed (--force recomputes). With --json,
stdout is {task: {metric: value}} and the table goes to stderr.

With MOTIF_TERMINATION_LOG=FILE (the chart's eval Job: /dev/termination-log), the scores also go to
FILE as compact JSON, at most 4096 bytes, for `motif status` to read from the pod's status.

Devices: --device auto uses the GPUs when there are any (one if it holds the model, else the blocks
split across all visible GPUs: 8 x 25 GiB for 102B in bf16) and the CPU otherwise; --device
cuda:0,cuda:1 names them.

Offline: with --data-dir (or motif.eval.data_dir) every task reads <DIR>/<task>/<split>.jsonl
instead of the hub, with lm-eval's own prompts and metrics; `--download-data` writes that layout
on a machine that reaches the hub (docs/evaluation.md).

Exit status: 0 done (or reused), 2 bad input (nothing written), 1 the Pushgateway refused the push
(the results on disk are complete; a rerun reuses them and pushes again).
"""


HELDOUT_LOGITS_BYTES = 10 * 2**30  # what one held-out batch's logits may take on the last device
TERMINATION_LOG_ENV = "MOTIF_TERMINATION_LOG"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)  # the eval Job sets it to its container's terminationMessagePath


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help="checkpoint directory")
    parser.add_argument("--stage", metavar="STAGE_FILE", help="evaluate the stage's motif.output as motif.eval says")
    parser.add_argument("--tasks", metavar="T1,T2", help="lm-eval task or group names, comma-separated")
    parser.add_argument("--include-path", metavar="DIR", help="extra task YAMLs, as lm-eval's --include_path")
    parser.add_argument("--data-dir", metavar="DIR", help="local task data <DIR>/<task>/<split>.jsonl (offline)")
    parser.add_argument("--num-fewshot", type=int, metavar="N", help="few-shot examples (default: each task's own)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N documents per task (smoke runs)")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: CHECKPOINT, or the stage's)")
    parser.add_argument("--out", metavar="DIR", help="result directory (default CHECKPOINT/eval)")
    parser.add_argument("--json", action="store_true", help="print {task: {metric: value}} as JSON on stdout")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, or a list to split across (cuda:0,cuda:1)")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto", help="auto: bf16 on GPU")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="sequences per forward (default 8)")
    parser.add_argument("--pushgateway", metavar="URL", help="push motif_eval_score to this Pushgateway")
    parser.add_argument("--stage-name", metavar="NAME", help="stage label of the pushed scores (default: from path)")
    parser.add_argument("--log-samples", action="store_true", help="also write lm-eval's per-sample records")
    parser.add_argument("--force", action="store_true", help="evaluate again even if a finished result exists")
    parser.add_argument(
        "--download-data",
        action="store_true",
        help="write the tasks' data into --data-dir (or motif.eval.data_dir) and exit; needs hub access",
    )


@dataclass
class EvalRequest:
    """What `motif eval` is asked, as its flags say it (`add_arguments`); the demo builds one directly."""

    checkpoint: str | None = None
    stage: str | None = None
    tasks: str | None = None  # comma-separated
    include_path: str | None = None
    data_dir: str | None = None
    num_fewshot: int | None = None
    limit: int | None = None
    tokenizer: str | None = None
    out: str | None = None
    json: bool = False
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    pushgateway: str | None = None
    stage_name: str | None = None
    log_samples: bool = False
    force: bool = False
    download_data: bool = False
    verbose: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalRequest:
        from motif.request import from_namespace

        return from_namespace(cls, args)


@dataclass
class Job:
    """One evaluation, every path resolved: what `motif eval` was asked to do."""

    checkpoint: Path
    tokenizer: Path
    out: Path
    stage_name: str
    tasks: list[str] = field(default_factory=list)
    include_paths: list[Path] = field(default_factory=list)
    data_dir: Path | None = None
    num_fewshot: int | None = None
    limit: int | None = None
    heldout: list = field(default_factory=list)  # HeldoutSource
    heldout_seq_len: int = 0
    pushgateway: str | None = None

    def request(self, dtype: str) -> dict:
        """What identifies the result: a finished summary with the same request is reused."""
        from motif.eval.results import files_id

        return {
            "tasks": self.tasks,
            "include_path": [str(p) for p in self.include_paths],
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "num_fewshot": self.num_fewshot,
            "limit": self.limit,
            "heldout": [asdict(h) for h in self.heldout],
            "heldout_seq_len": self.heldout_seq_len,
            "tokenizer": str(self.tokenizer),
            "dtype": dtype,
            # Edited task YAMLs, local data, held-out text or tokenizer make a new request, not a
            # reused result: identified by content, not by path, size or time.
            "task_files": files_id([*self.include_paths, *([self.data_dir] if self.data_dir else [])]),
            "heldout_files": files_id([h.path for h in self.heldout]),
            "tokenizer_files": files_id([self.tokenizer / name for name in TOKENIZER_FILES]),
        }


def run(namespace: argparse.Namespace) -> int:
    args = EvalRequest.from_args(namespace)
    _check_flags(args)
    job = resolve_job(args)
    if args.download_data:
        return download_data(job)
    if job.data_dir is not None:
        # Every task reads its data from the volume: nothing to ask the hub (set before lm-eval
        # and datasets are imported, which read these once).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if not args.verbose:
        quiet_libraries()
    return evaluate(job, args)


def quiet_libraries() -> None:
    """lm-eval, transformers and datasets log every step at INFO; keep their warnings only."""
    for name in ("lm_eval", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)


def download_data(job: Job) -> int:
    """`--download-data`: the tasks' splits to the local layout, on a machine that reaches the hub."""
    from motif.eval.tasks import download, plan_tasks

    if job.data_dir is None:
        raise MotifError("--download-data: give --data-dir DIR (or set motif.eval.data_dir)")
    plan = plan_tasks(job.tasks, job.include_paths)
    written = download(plan, job.data_dir, progress=sys.stderr.isatty())
    print(f"motif eval: wrote {len(written)} files for {len(plan.leaves)} tasks into {job.data_dir}")
    return 0


def _check_flags(args: EvalRequest) -> None:
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise MotifError(f"--num-fewshot: expected >= 0, got {args.num_fewshot}")
    if args.limit is not None and args.limit <= 0:
        raise MotifError(f"--limit: expected > 0, got {args.limit}")
    if args.batch_size <= 0:
        raise MotifError(f"--batch-size: expected > 0, got {args.batch_size}")
    if args.stage and args.checkpoint:
        raise MotifError("--stage evaluates the stage's motif.output; give no CHECKPOINT with it")
    if not args.stage and not args.checkpoint:
        raise MotifError("give CHECKPOINT (or --stage STAGE_FILE)")
    if args.pushgateway is not None:
        from motif.eval.push import check_gateway

        check_gateway(args.pushgateway)


def resolve_job(args: EvalRequest) -> Job:
    """The evaluation asked for, from the flags and (with --stage) the stage file; flags win."""
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks is not None else None
    if args.stage:
        from motif.config import load_stage

        stage = load_stage(args.stage)
        e = stage.eval
        if e is None:
            raise MotifError(f"{args.stage}: motif.eval: missing; it names the tasks and held-out sets to evaluate")
        checkpoint = Path(stage.output)
        include = args.include_path or e.include_path
        data_dir = args.data_dir or e.data_dir
        return Job(
            checkpoint=checkpoint.resolve(),
            tokenizer=Path(args.tokenizer or stage.data.tokenizer).resolve(),
            out=Path(args.out or e.out or checkpoint / "eval").resolve(),
            stage_name=args.stage_name or stage.name,
            tasks=tasks if tasks is not None else list(e.tasks),
            include_paths=[Path(include).resolve()] if include else [],
            data_dir=Path(data_dir).resolve() if data_dir else None,
            num_fewshot=args.num_fewshot if args.num_fewshot is not None else e.num_fewshot,
            limit=args.limit if args.limit is not None else e.limit,
            heldout=list(e.heldout),
            heldout_seq_len=stage.data.seq_len,
            pushgateway=args.pushgateway or e.pushgateway,
        )
    checkpoint = Path(args.checkpoint).resolve()
    if args.tokenizer:
        tokenizer = Path(args.tokenizer)
    elif (checkpoint / "tokenizer.json").is_file() or args.download_data:
        tokenizer = checkpoint
    else:
        raise MotifError(
            f"{checkpoint / 'tokenizer.json'}: missing; pass --tokenizer DIR (the tokenizer the model was trained with)"
        )
    if not tasks:
        raise MotifError("--tasks: give at least one lm-eval task (e.g. --tasks kmmlu,kobest,mmlu)")
    name = checkpoint.parent.name if checkpoint.name == "final" else checkpoint.name
    return Job(
        checkpoint=checkpoint,
        tokenizer=tokenizer.resolve(),
        out=Path(args.out).resolve() if args.out else checkpoint / "eval",
        stage_name=args.stage_name or name,
        tasks=tasks,
        include_paths=[Path(args.include_path).resolve()] if args.include_path else [],
        data_dir=Path(args.data_dir).resolve() if args.data_dir else None,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        pushgateway=args.pushgateway,
    )


def check_tokenizer(tokenizer: Path, vocab_size: int, checkpoint: Path) -> None:
    """The tokenizer's ids must index the model's embedding (a model may pad it by a few rows)."""
    from motif.data.tokenizer import Tokenizer

    size = Tokenizer(tokenizer).vocab_size
    if size > vocab_size or size < vocab_size - 128:
        raise MotifError(
            f"tokenizer mismatch: {tokenizer} has {size} tokens, but {checkpoint} has vocab_size {vocab_size} "
            "(config.json); pass the tokenizer the model was trained with (--tokenizer DIR)"
        )


def evaluate(job: Job, args: EvalRequest) -> int:
    summary = summarize(job, args)
    write_termination_message(summary)
    report(summary, as_json=args.json)
    if job.pushgateway:
        from motif.eval.push import PushError, push_scores

        try:
            n = push_scores(job.pushgateway, job.stage_name, summary["tasks"])
        except PushError as e:
            print(f"motif eval: error: {e}", file=sys.stderr)
            return 1
        print(f"motif eval: pushed {n} scores to {job.pushgateway} (stage {job.stage_name})", file=sys.stderr)
    return 0


def summarize(job: Job, args: EvalRequest) -> dict:
    """Reuse a finished result for the same request, or check the whole request and evaluate.

    Returns summary.json's content. The reuse check comes first: it reads only the checkpoint's
    headers, so the rerun of a finished eval Job skips lm-eval's task index and the held-out reads.
    """
    from motif.eval import results
    from motif.model.checkpoint import open_checkpoint

    ckpt = open_checkpoint(job.checkpoint)
    check_tokenizer(job.tokenizer, ckpt.args.vocab_size, job.checkpoint)
    devices, dtype = choose_devices(args.device, args.dtype, ckpt)
    request = job.request(dtype)
    ckpt_id = results.checkpoint_id(job.checkpoint)
    summary = None if args.force else results.reusable(job.out, request, ckpt_id)
    if summary is not None:
        print(f"motif eval: reusing the finished result in {job.out} ({summary['finished']})", file=sys.stderr)
        return summary
    plan = None
    if job.tasks:
        from motif.eval.tasks import plan_tasks

        plan = plan_tasks(job.tasks, job.include_paths, job.data_dir, job.num_fewshot)
    heldout = None
    if job.heldout:
        from motif.eval.heldout import HeldoutSet

        # Held-out windows are full seq_len long: bound the batch by the logits it makes ([B, T, V] fp32,
        # twice with the log-softmax), 1 sequence of 8192 tokens for Llama 3's vocabulary.
        per_sequence = 2 * job.heldout_seq_len * ckpt.args.vocab_size * 4
        batch = max(1, min(args.batch_size, HELDOUT_LOGITS_BYTES // per_sequence))
        heldout = HeldoutSet.from_sources(job.heldout, job.tokenizer, job.heldout_seq_len, batch)
    from motif.storage.lease import STALE_S, acquire

    # One evaluation per result directory: a second one into the same --out fails at once, naming
    # the first (this pod's own predecessor, recreated on another node, is waited for until stale).
    with acquire(job.out, "motif eval", wait_s_same_host=STALE_S + 15, inside=True):
        return _run_and_write(job, args, plan, heldout, devices, dtype, request, ckpt_id)


def _run_and_write(job: Job, args: EvalRequest, plan, heldout, devices, dtype, request, ckpt_id) -> dict:
    from motif.eval import results
    from motif.eval.loader import load_eval_model

    show = sys.stderr.isatty()
    print(f"motif eval: {job.checkpoint} on {', '.join(devices)} ({dtype})", file=sys.stderr, flush=True)
    model = load_eval_model(job.checkpoint, dtype, devices, progress=show)
    if len(devices) > 1:
        print(model.placement.describe(), file=sys.stderr)
    raw, tasks = None, {}
    if plan is not None:
        raw = run_harness(job, args, plan, model)
        tasks = results.flatten(raw)
    scores = {}
    if heldout is not None:
        scores = heldout.score(lambda t: model(t).logits, model.device, lambda _: None, progress=show)
    summary = results.make_summary(job.stage_name, job.checkpoint, tasks, scores, request, ckpt_id)
    written = results.write_results(job.out, raw, summary)
    print(f"motif eval: wrote {', '.join(p.name for p in written)} to {job.out}", file=sys.stderr)
    return summary


def write_termination_message(summary: dict) -> None:
    """The scores, compact, into the file MOTIF_TERMINATION_LOG names (the eval Job's
    terminationMessagePath): the kubelet copies it into the pod's status, where `motif status`
    reads it without the volume. Unset (a developer's machine), nothing is written.

    The results are on disk by now, so a failure here is one warning line, never a failed
    evaluation. Written in place: the kubelet bind-mounts that file, a rename could not replace it.
    """
    path = os.environ.get(TERMINATION_LOG_ENV)
    if not path:
        return
    from motif.eval.results import termination_message

    try:
        Path(path).write_text(termination_message(summary), encoding="utf-8")
    except Exception as e:  # anything (a read-only path, an odd reused summary) is only a warning
        detail = " ".join(str(e).split())
        print(f"motif eval: warning: scores not written to {path} ({type(e).__name__}: {detail})", file=sys.stderr)


def run_harness(job: Job, args: EvalRequest, plan, model) -> dict:
    """lm-eval's simple_evaluate with the motif model class on the already loaded model."""
    import lm_eval

    from motif.eval.lm import MotifLM

    lm = MotifLM(
        pretrained=str(job.checkpoint),
        tokenizer=str(job.tokenizer),
        model=model,
        batch_size=args.batch_size,
        devices=list(model.placement.devices),
    )
    with tempfile.TemporaryDirectory(prefix="motif-eval-tasks-") as shadow:
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=plan.names,
            task_manager=plan.manager(Path(shadow)),
            num_fewshot=job.num_fewshot,
            limit=job.limit,
            log_samples=args.log_samples,
        )
    if raw is None:
        raise MotifError("lm-eval returned no results")
    return raw


def choose_devices(spec: str, dtype_flag: str, ckpt) -> tuple[list[str], str]:
    """The devices to place the model on and the dtype name, from --device and --dtype."""
    import torch

    from motif.eval.loader import HEADROOM_FRACTION, device_memory
    from motif.eval.placement import PlacementError, plan_placement
    from motif.model.checkpoint import to_dtype

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    names = [d.strip() for d in spec.split(",") if d.strip()]
    try:
        parsed = [torch.device(d) for d in names]
    except RuntimeError as e:
        raise MotifError(f"--device: {spec!r} is not a device list ({e})") from None
    if any(d.type == "cuda" for d in parsed) and not torch.cuda.is_available():
        raise MotifError(f"--device: {spec} asks for CUDA, but no GPU is visible")
    on_gpu = any(d.type == "cuda" for d in parsed)
    dtype = dtype_flag if dtype_flag != "auto" else ("bf16" if on_gpu else "fp32")
    if names == ["cuda"]:
        # One GPU when it holds the model; otherwise every visible GPU (more memory left for larger
        # batches; the blocks run one device after the other either way).
        visible = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        memory = device_memory(visible[0])
        try:
            plan_placement(ckpt.args, visible[:1], to_dtype(dtype), memory, int(memory * HEADROOM_FRACTION))
            return visible[:1], dtype
        except PlacementError:
            return visible, dtype  # load_eval_model reports it if even all of them are too small
    return names, dtype


def report(summary: dict, as_json: bool) -> None:
    from motif.eval import results

    text = results.table(summary)
    if as_json:
        print(text, file=sys.stderr)
        print(json.dumps(summary["tasks"], indent=2))
    else:
        print(text)
