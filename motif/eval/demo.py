"""The demo's evaluation: tiny local tasks in KMMLU, KoBEST and MMLU formats, held-out sets, a score table per stage.

The tasks `include:` the task files lm-eval ships (`kmmlu/default/_default_kmmlu_yaml`,
`kobest/kobest_copa.yaml`, `mmlu/default/_default_template_yaml`), so prompts and metrics are the
benchmarks' own; only the documents are made here, from the words of the demo corpus:

* `demo_kmmlu` (Korean) and `demo_mmlu` (English): KMMLU's and MMLU's 4-way format ("...\\nA. ...",
  the answer a letter). A tiny model trained on plain text has never seen the format and scores
  near chance (0.25): what a base model at this size would do on the real benchmarks.
* `demo_kmmlu_direct` (Korean, generative): KMMLU direct's format, the Llama-3-Motif report's
  KMMLU metric: after the same prompt the model *writes* the answer, scored by exact match with
  the letter (lm-eval's stop strings; at most 16 new tokens). A model this size writes a sentence
  of the corpus, not a letter: 0 is the expected score, and the generations are in the samples.
* `demo_kobest_copa`: KoBEST COPA's format, the likelier of two continuations. The right one is how
  a pattern of the corpus goes on ("오늘 X는 Y를 봅니다. 그래서 Z는 행복합니다."), the wrong one a
  sentence of the same length that never follows 그래서: training moves this score.

The held-out sets are other documents of the corpus generator (another seed), never trained on.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

TASKS = ("demo_kmmlu", "demo_kobest_copa", "demo_mmlu", "demo_kmmlu_direct")
DIRECT_MAX_GEN_TOKS = 16  # the answer is a letter; a model that never writes a stop string costs 16 steps, not 256
HELDOUT_SEED = 7  # the training corpus uses seed 0: the same distribution, other documents
HELDOUT_DOCS = 80  # ~25 KB per language: a stable score in about a second per scoring on CPU
TEST_DOCS = 40


def prepare(out: Path) -> None:
    """Write the tasks (out/eval/tasks) and the held-out sets (out/data/heldout); idempotent."""
    from motif.data.corpus import write_corpus

    heldout = out / "data" / "heldout"
    if not all((heldout / f"{lang}.jsonl").is_file() for lang in ("ko", "en")):
        write_corpus(heldout, HELDOUT_DOCS, seed=HELDOUT_SEED)
    write_tasks(out / "eval")


def write_tasks(root: Path) -> Path:
    """Task YAMLs in root/tasks, their documents in root/tasks/data; returns the task directory.

    Files are rewritten only when their content changes: `motif eval` reuses a finished result
    while the files of its include path are unchanged.
    """
    import lm_eval

    packaged = Path(lm_eval.__file__).parent / "tasks"
    rng = random.Random("motif-demo-eval")
    specs = {
        "demo_kmmlu": (
            packaged / "kmmlu/default/_default_kmmlu_yaml",
            {"test": kmmlu_rows(rng, TEST_DOCS), "dev": kmmlu_rows(rng, 5)},
            {},
        ),
        "demo_kobest_copa": (
            packaged / "kobest/kobest_copa.yaml",
            {"test": copa_rows(rng, TEST_DOCS), "train": copa_rows(rng, 5)},
            {"validation_split": None},
        ),
        "demo_mmlu": (
            packaged / "mmlu/default/_default_template_yaml",
            {"test": mmlu_rows(rng, TEST_DOCS), "dev": mmlu_rows(rng, 5)},
            {"description": "The following are multiple choice questions (with answers) about sentences.\n\n"},
        ),
        "demo_kmmlu_direct": (
            packaged / "kmmlu/direct/_direct_kmmlu_yaml",
            {"test": kmmlu_rows(rng, TEST_DOCS), "dev": kmmlu_rows(rng, 5)},
            {"generation_kwargs": direct_generation_kwargs(packaged / "kmmlu/direct/_direct_kmmlu_yaml")},
        ),
    }
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for name, (include, splits, extra) in specs.items():
        files = {}
        for split, rows in splits.items():
            path = root / "tasks" / "data" / name / f"{split}.jsonl"
            _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            files[split] = str(path.resolve())
        config = {
            "task": name,
            "include": str(include),
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": files},
            **extra,
        }
        _write(tasks / f"{name}.yaml", json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    return tasks


def direct_generation_kwargs(packaged_yaml: Path) -> dict:
    """KMMLU direct's own generation settings (stop strings, greedy), with a short `max_gen_toks`."""
    import yaml

    config = yaml.safe_load(packaged_yaml.read_text(encoding="utf-8"))
    return {**config["generation_kwargs"], "max_gen_toks": DIRECT_MAX_GEN_TOKS}


def kmmlu_rows(rng: random.Random, n: int) -> list[dict]:
    from motif.data.corpus import KO

    rows = []
    for _ in range(n):
        subject, place, obj = rng.choice(KO["subject"]), rng.choice(KO["place"]), rng.choice(KO["object"])
        right = rng.choice(KO["verb"])
        wrong = [rng.choice(KO["place"]), rng.choice(KO["subject"]), rng.choice(KO["adj"])]
        choices = [right, *wrong]
        rng.shuffle(choices)
        rows.append(
            {
                "question": f"다음 문장의 빈칸에 알맞은 말은? {subject} {place} {obj} ____.",
                **dict(zip("ABCD", choices, strict=True)),
                "answer": choices.index(right) + 1,  # KMMLU counts answers from 1
                "Category": "demo",
                "Human Accuracy": 1.0,
            }
        )
    return rows


def mmlu_rows(rng: random.Random, n: int) -> list[dict]:
    from motif.data.corpus import EN

    rows = []
    for _ in range(n):
        subject, obj, place = rng.choice(EN["subject"]), rng.choice(EN["object"]), rng.choice(EN["place"])
        right = rng.choice(EN["verb"])
        choices = [right, rng.choice(EN["place"]), rng.choice(EN["subject"]), rng.choice(EN["adj"])]
        rng.shuffle(choices)
        rows.append(
            {
                "question": f"Which word completes the sentence? {subject.capitalize()} ____ {obj} {place}.",
                "subject": "sentences",
                "choices": choices,
                "answer": choices.index(right),  # MMLU counts answers from 0
            }
        )
    return rows


def copa_rows(rng: random.Random, n: int) -> list[dict]:
    from motif.data.corpus import KO

    rows = []
    for i in range(n):
        subject, obj, verb = rng.choice(KO["subject"]), rng.choice(KO["object"]), rng.choice(KO["verb"])
        other, adj = rng.choice(KO["subject"]), rng.choice(KO["adj"])
        # Both are sentences of two words; only the right one is how the corpus goes on after 그래서.
        right = f"{other} {adj}."
        wrong = f"{other} {rng.choice(KO['verb'])}."
        label = i % 2
        rows.append(
            {
                "premise": f"오늘 {subject} {obj} {verb}.",
                "question": "결과",  # KoBEST COPA: the connector " 그래서" (so) joins premise and choice
                "alternative_1": wrong if label else right,
                "alternative_2": right if label else wrong,
                "label": label,
            }
        )
    return rows


def _write(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---- what each stage writes ---------------------------------------------------------------------

PROMPTS = {"ko": "고양이는", "en": "The cat"}
CONTINUATION_TOKENS = 20


def stage_checkpoints(out: Path, stages) -> list[tuple[str, Path]]:
    """(label, checkpoint) in order: each growth output (before training), then each stage's final output."""
    found = []
    for _, stage in stages:
        if stage.growth and stage.growth.output and (out / stage.growth.output / "config.json").is_file():
            found.append((f"{stage.name} grown", out / stage.growth.output))
        if (out / stage.output / "config.json").is_file():
            found.append((f"{stage.name} final", out / stage.output))
    return found


def continuations(out: Path, stages) -> list[dict]:
    """Greedy continuations of one Korean and one English prompt by every checkpoint of the run
    (what `motif generate` writes); each row marks whether it equals the row before."""
    from motif.data.tokenizer import Tokenizer
    from motif.eval.generate import continue_text
    from motif.eval.loader import load_eval_model

    tokenizer = Tokenizer(out / stages[0][1].data.tokenizer)
    rows, previous = [], None
    for label, path in stage_checkpoints(out, stages):
        model = load_eval_model(path, None, ["cpu"])
        texts = {lang: continue_text(model, tokenizer, p, CONTINUATION_TOKENS).text for lang, p in PROMPTS.items()}
        rows.append({"checkpoint": label, "texts": texts, "same_as_previous": texts == previous})
        previous = texts
    return rows


def print_continuations(out: Path, stages) -> list[dict]:
    rows = continuations(out, stages)
    prompts = ", ".join(f"{lang} {p!r}" for lang, p in PROMPTS.items())
    print(
        f"\n== what each checkpoint writes: greedy, {CONTINUATION_TOKENS} new tokens after {prompts} (motif generate)"
    )
    width = max(len(r["checkpoint"]) for r in rows)
    for r in rows:
        note = "  (identical to the row above: growth preserved it)" if r["same_as_previous"] else ""
        for i, (lang, text) in enumerate(r["texts"].items()):
            label = r["checkpoint"] if i == 0 else ""
            shown = " ".join(text.split())  # one line per continuation
            print(f"   {label:<{width}}  {lang}: {PROMPTS[lang]} -> {shown}{note if i == 0 else ''}")
    return rows


# ---- the score table ---------------------------------------------------------------------------


def evaluate_stages(out: Path, stage_files: list[Path]) -> list[dict]:
    """`motif eval --stage` for each stage file, in the demo's working directory; their summaries.

    What lm-eval prints (progress bars, notices) goes to `out/eval/<stage>.log`, one line per stage here.
    """
    from motif.config import load_stage
    from motif.eval import command

    command.quiet_libraries()
    summaries = []
    stage_files = [Path(f).resolve() for f in stage_files]  # the stages' own paths resolve in `out`
    with contextlib.chdir(out):
        for path in stage_files:
            name = load_stage(path).name
            log = out / "eval" / f"{name}.log"
            t = time.perf_counter()
            request = command.EvalRequest(stage=str(path), device="cpu")
            with _output_to(log):
                summaries.append(command.summarize(command.resolve_job(request), request))
            print(f"   {name}: evaluated in {time.perf_counter() - t:.0f}s (lm-eval's output: {log})", flush=True)
    return summaries


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr into a file, at the descriptor level (subprocesses included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with path.open("w") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def score_table(summaries: list[dict]) -> str:
    from motif.eval.results import render

    langs = sorted({lang for s in summaries for lang in s["heldout"]})
    tasks = [t for t in TASKS if any(t in s["tasks"] for s in summaries)]
    metric = {
        t: next(("acc" if "acc" in s["tasks"][t] else "exact_match") for s in summaries if t in s["tasks"])
        for t in tasks
    }
    rows = [["stage", *[f"held-out {lang} bits/byte" for lang in langs], *[f"{t} {metric[t]}" for t in tasks]]]
    for s in summaries:
        cells = [f"{s['heldout'][lang]:.4f}" if lang in s["heldout"] else "-" for lang in langs]
        cells += [f"{s['tasks'][t][metric[t]]:.3f}" if t in s["tasks"] else "-" for t in tasks]
        rows.append([s["stage"], *cells])
    return render(rows, left=1)


def report(out: Path, stage_files: list[Path]) -> list[dict]:
    """Evaluate every stage that has a `motif.eval` section and print the score table (what `make demo` ends with)."""
    from motif.config import load_stage

    stage_files = [f for f in stage_files if load_stage(f).eval is not None]
    if not stage_files:
        return []
    print("\n== evaluation: motif eval --stage for each stage (lm-evaluation-harness, held-out sets)", flush=True)
    prepare(out)
    summaries = evaluate_stages(out, stage_files)
    print()
    print(score_table(summaries))
    print(
        "\ndemo_kmmlu, demo_mmlu: KMMLU's and MMLU's 4-way letter format (chance 0.25; a model this small does "
        "not learn the format); demo_kobest_copa: KoBEST COPA's format (chance 0.5); demo_kmmlu_direct: KMMLU "
        "direct, the answer letter written by the model (exact match; a model this small writes corpus text). "
        "Held-out: bits per byte, lower is better.",
        flush=True,
    )
    return summaries
