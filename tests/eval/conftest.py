"""Fixtures of the evaluation tests: a tiny tokenizer and checkpoints, and tiny local lm-eval tasks.

The tasks are in the formats of KMMLU (log-likelihood and direct, generative), KoBEST (COPA,
BoolQ) and MMLU: each YAML `include:`s the
task file lm-eval ships, so prompt, choices and metric are the benchmark's own, and only the data
(a few documents written here) is local.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # monitoring/ (the local Prometheus and Pushgateway) is not an installed package
    sys.path.insert(0, str(ROOT))
VOCAB = 384
SHAPE = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
TASKS = ("tiny_kmmlu", "tiny_kobest_copa", "tiny_kobest_boolq", "tiny_mmlu")
GENERATIVE_TASKS = ("tiny_kmmlu_direct", "tiny_kmmlu_direct_stops")


def read_samples(out: Path, tasks: tuple[str, ...], row) -> dict:
    """`motif eval --log-samples`'s output: the per-task summary, and `row(sample)` of each logged
    sample by task and document (what a test compares)."""
    summary = json.loads((out / "summary.json").read_text())
    samples = {}
    for task in tasks:
        rows = [json.loads(line) for line in (out / f"samples_{task}.jsonl").read_text().splitlines()]
        samples[task] = {r["doc_id"]: row(r) for r in rows}
    return {"tasks": summary["tasks"], "samples": samples}


def lm_eval_hf(ckpt: Path, tokenizer: Path, tasks_dir: Path, tasks: tuple[str, ...], num_fewshot: int, row) -> dict:
    """The independent reference: lm-eval's own `hf` model on the same checkpoint and task files, in
    the shape of `read_samples`."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    raw = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={ckpt},tokenizer={tokenizer},dtype=float32",
        tasks=list(tasks),
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        num_fewshot=num_fewshot,
        device="cpu",
        batch_size=8,
        log_samples=True,
    )
    samples = {t: {r["doc_id"]: row(r) for r in rows} for t, rows in raw["samples"].items()}
    metrics = {t: {k.split(",")[0]: v for k, v in m.items() if k.endswith(",none")} for t, m in raw["results"].items()}
    return {"tasks": metrics, "samples": samples}


def packaged(relative: str) -> Path:
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / relative
    assert path.is_file(), f"lm-eval no longer ships {relative}"
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def kmmlu_rows(n: int, offset: int = 0) -> list[dict]:
    things = ["빨간 사과를", "초록색 문을", "긴 편지를", "파란 배를", "오래된 책을", "밝은 등을"]
    return [
        {
            "question": f"고양이는 아침에 무엇을 봅니까? ({i + offset})",
            "A": things[i % 6],
            "B": things[(i + 1) % 6],
            "C": things[(i + 2) % 6],
            "D": things[(i + 3) % 6],
            "answer": 1 + (i * 7 + offset) % 4,  # KMMLU counts answers from 1
            "Category": "tiny",
            "Human Accuracy": 0.5,
        }
        for i in range(n)
    ]


def copa_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        good, bad = "그래서 친구는 행복합니다.", "행복합니다 친구는 그래서."
        rows.append(
            {
                "premise": f"오늘 고양이는 빨간 사과를 봅니다 {i}.",
                "question": "결과" if i % 2 else "원인",
                "alternative_1": good if i % 3 else bad,
                "alternative_2": bad if i % 3 else good,
                "label": 0 if i % 3 else 1,
            }
        )
    return rows


def boolq_rows(n: int) -> list[dict]:
    return [
        {
            "paragraph": f"선생님은 시장에서 긴 편지를 찾습니다 {i}.",
            "question": "선생님은 편지를 찾습니까?",
            "label": i % 2,
        }
        for i in range(n)
    ]


def mmlu_rows(n: int, offset: int = 0) -> list[dict]:
    things = ["a red apple", "the green door", "a long letter", "the blue boat", "an old book"]
    return [
        {
            "question": f"What does the cat see in the morning? ({i + offset})",
            "subject": "tiny",
            "choices": [things[(i + k) % 5] for k in range(4)],
            "answer": (i * 3 + offset) % 4,  # MMLU counts from 0
        }
        for i in range(n)
    ]


def write_tasks(root: Path, docs: int = 8) -> Path:
    """Task YAMLs under root/tasks, data under root/data; returns the task directory."""
    data = root / "data"
    specs = {
        "tiny_kmmlu": (
            "kmmlu/default/_default_kmmlu_yaml",
            {
                "test": write_jsonl(data / "kmmlu/test.jsonl", kmmlu_rows(docs)),
                "dev": write_jsonl(data / "kmmlu/dev.jsonl", kmmlu_rows(5, 100)),
            },
            {},
        ),
        "tiny_kobest_copa": (
            "kobest/kobest_copa.yaml",
            {
                "test": write_jsonl(data / "copa/test.jsonl", copa_rows(docs)),
                "train": write_jsonl(data / "copa/train.jsonl", copa_rows(6)),
            },
            {"validation_split": None},
        ),
        "tiny_kobest_boolq": (
            "kobest/kobest_boolq.yaml",
            {
                "test": write_jsonl(data / "boolq/test.jsonl", boolq_rows(docs)),
                "train": write_jsonl(data / "boolq/train.jsonl", boolq_rows(6)),
            },
            {"validation_split": None},
        ),
        "tiny_kmmlu_direct": (  # generative: the model writes the answer letter (the paper's KMMLU metric)
            "kmmlu/direct/_direct_kmmlu_yaml",
            {
                "test": write_jsonl(data / "kmmlu/test.jsonl", kmmlu_rows(docs)),
                "dev": write_jsonl(data / "kmmlu/dev.jsonl", kmmlu_rows(5, 100)),
            },
            {},
        ),
        "tiny_kmmlu_direct_stops": (  # the same, with stop strings that occur and a short max_gen_toks
            "kmmlu/direct/_direct_kmmlu_yaml",
            {
                "test": write_jsonl(data / "kmmlu/test.jsonl", kmmlu_rows(docs)),
                "dev": write_jsonl(data / "kmmlu/dev.jsonl", kmmlu_rows(5, 100)),
            },
            {"generation_kwargs": {"until": ["e", "지"], "max_gen_toks": 12, "do_sample": False, "temperature": 0.0}},
        ),
        "tiny_mmlu": (
            "mmlu/default/_default_template_yaml",
            {
                "test": write_jsonl(data / "mmlu/test.jsonl", mmlu_rows(docs)),
                "dev": write_jsonl(data / "mmlu/dev.jsonl", mmlu_rows(5, 100)),
            },
            {"description": "The following are multiple choice questions (with answers) about tiny things.\n\n"},
        ),
    }
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for name, (include, files, extra) in specs.items():
        config = {
            "task": name,
            "include": str(packaged(include)),
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}},
            **extra,
        }
        (tasks / f"{name}.yaml").write_text(json.dumps(config, ensure_ascii=False, indent=1))
    return tasks


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    from motif.data.corpus import documents, write_corpus
    from motif.data.tokenizer import train_bpe

    wd = tmp_path_factory.mktemp("eval")
    write_corpus(wd / "data", docs_per_language=60, seed=3)
    train_bpe(documents("ko", 200, 1) + documents("en", 200, 1), VOCAB, wd / "tokenizer")
    write_tasks(wd)
    return wd


@pytest.fixture(scope="session")
def tokenizer_dir(workdir) -> Path:
    return workdir / "tokenizer"


@pytest.fixture(scope="session")
def tasks_dir(workdir) -> Path:
    return workdir / "tasks"


def make_checkpoint(path: Path, seed: int = 0, **shape) -> Path:
    import torch

    from motif.model import Llama, ModelArgs
    from motif.model.checkpoint import save

    args = ModelArgs(**{**SHAPE, **shape}, torch_dtype="float32")
    torch.manual_seed(seed)
    model = Llama(args)
    model.init_weights(seed=seed)
    with torch.no_grad():  # norm gains away from 1, so a dropped gain would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    save(model, path, dtype="fp32")
    return path


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    assert path, "prometheus not found: run `make deps` (Debian package prometheus)"
    return path


@pytest.fixture(scope="session")
def task_names() -> tuple[str, ...]:
    return TASKS


@pytest.fixture(scope="session")
def make_ckpt():
    """Factory: make_ckpt(path, seed=0, **ModelArgs overrides) -> a tiny random checkpoint (fp32)."""
    return make_checkpoint


@pytest.fixture(scope="session")
def plain_ckpt(workdir) -> Path:
    return make_checkpoint(workdir / "ckpt" / "plain")


@pytest.fixture(scope="session")
def masked_ckpts(workdir, plain_ckpt) -> dict[str, Path]:
    """The plain checkpoint grown by MSG at m = 0: in width, and in depth (blended blocks)."""
    from motif.growth import GrowthTargets, grow_checkpoint

    out = {
        "width": workdir / "ckpt" / "msg-width",
        "depth": workdir / "ckpt" / "msg-depth",
    }
    grow_checkpoint(plain_ckpt, out["width"], GrowthTargets(hidden=96, intermediate=192, heads=6), progress=False)
    grow_checkpoint(plain_ckpt, out["depth"], GrowthTargets(layers=4), depth_method="msg", seed=5, progress=False)
    return out
