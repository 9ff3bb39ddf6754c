"""Which lm-eval tasks to run, and where their data comes from (the hub, or local files on a volume).

Why it is built this way:

* **Cheap when it can be.** Indexing lm-eval's ~14,700 built-in task YAMLs takes about a minute
  on a small machine. Names are first looked up in the include paths alone
  (`include_defaults=False`); the built-in index is built only when a name is not found there.
* **Offline by shadowing, not by copying.** With a local data directory every leaf task is
  replaced by a same-named YAML that `include:`s the packaged one (so its prompt, few-shot
  split and metric stay lm-eval's) and overrides only the data keys: `dataset_path: json` and
  `data_files` under `<data_dir>/<task>/<split>.jsonl`. Groups (kmmlu, kobest, mmlu) pick up the
  shadows by name.
* **Checked before anything runs.** Unknown names, output types the motif model cannot run and
  missing data files are found from the YAMLs alone; template syntax errors, malformed rows, empty
  splits and too few few-shot rows from the templates and local files (`motif.eval.taskcheck`);
  each as one line. Log-likelihood tasks and generative ones (`generate_until`: KMMLU direct,
  HRM8K) both run.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from motif.errors import MotifError

SCORED_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")


class TaskError(MotifError):
    """A task that cannot be run as asked; the message names the task and what is missing."""


@dataclass
class Leaf:
    """One leaf task (not a group) and its merged YAML config, functions unresolved."""

    name: str
    yaml_path: Path | None
    config: dict[str, Any]

    def eval_split(self) -> str | None:
        return self.config.get("test_split") or self.config.get("validation_split")

    def fewshot_split(self) -> str | None:
        """The split lm-eval draws few-shot examples from (its own order of preference)."""
        fewshot_config = self.config.get("fewshot_config") or {}
        for split in (
            self.config.get("fewshot_split"),
            fewshot_config.get("split") if isinstance(fewshot_config, dict) else None,
            self.config.get("training_split"),
            self.config.get("validation_split"),
            self.config.get("test_split"),
        ):
            if split:
                return split
        return None

    def shots(self, num_fewshot: int | None) -> int:
        return int(num_fewshot if num_fewshot is not None else self.config.get("num_fewshot") or 0)


@dataclass
class TaskPlan:
    """The tasks of one run: the task index they resolve in, and their leaves."""

    names: list[str]
    leaves: dict[str, Leaf]
    index: dict = field(repr=False)  # name -> lm-eval index Entry (include paths over the packaged tasks)
    include_defaults: bool = False
    shadows: dict[str, dict[str, Any]] = field(default_factory=dict)  # leaf -> override YAML (data_dir)

    def manager(self, shadow_dir: Path | None = None):
        """lm-eval's TaskManager over this plan's index, plus the shadow YAMLs, written into `shadow_dir`."""
        from lm_eval.tasks._index import TaskIndex

        index = dict(self.index)
        if self.shadows:
            if shadow_dir is None:
                raise ValueError("this plan reads local task data: give a directory for its task YAMLs")
            write_shadows(self.shadows, shadow_dir)
            with _quiet_index():
                index.update(TaskIndex.build([shadow_dir]))
        return manager_from_index(index)


def plan_tasks(
    names: list[str],
    include_paths: list[str | Path] = (),
    data_dir: str | Path | None = None,
    num_fewshot: int | None = None,
) -> TaskPlan:
    """Resolve task names to leaves and check every leaf can run here (see the module docstring)."""
    if not names:
        raise TaskError("no tasks given (--tasks T1,T2 or motif.eval.tasks)")
    paths = []
    for p in include_paths:
        path = Path(p).resolve()
        if not path.is_dir():
            raise TaskError(f"{p}: include path is not a directory")
        paths.append(path)
    index, defaults = _index_for(names, paths)
    missing = [n for n in names if n not in index]
    if missing:
        close = difflib.get_close_matches(missing[0], list(index), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = f"lm-eval's tasks{' or ' + ', '.join(map(str, paths)) if paths else ''}"
        raise TaskError(f"unknown task {missing[0]!r}: not in {where}{hint}")
    leaves: dict[str, Leaf] = {}
    for name in names:
        for leaf in _leaves(name, index, set()):
            leaves.setdefault(leaf.name, leaf)
    for leaf in leaves.values():
        kind = leaf.config.get("output_type", "generate_until")
        if kind not in SCORED_TYPES:
            raise TaskError(
                f"task {leaf.name!r}: output_type {kind!r} is not one motif eval runs ({', '.join(SCORED_TYPES)})"
            )
        if kind == "generate_until":
            sampling_temperature(leaf.config.get("generation_kwargs") or {}, f"task {leaf.name}: ")
    plan = TaskPlan(list(names), leaves, index, defaults)
    if data_dir is not None:
        plan.shadows = {leaf.name: shadow_config(leaf, Path(data_dir), num_fewshot) for leaf in leaves.values()}
    else:
        for leaf in leaves.values():
            check_local_files(leaf)
    check_contents(plan, num_fewshot)
    return plan


def check_contents(plan: TaskPlan, num_fewshot: int | None) -> None:
    """Each leaf's templates parse and its local data (the shadow's, or its YAML's own) is usable."""
    from motif.eval.taskcheck import check_data, check_templates  # it imports this module

    for leaf in plan.leaves.values():
        check_templates(leaf)
        source = plan.shadows.get(leaf.name) or leaf.config
        kwargs = source.get("dataset_kwargs") or {}
        if source.get("dataset_path") == "json" and isinstance(kwargs, dict) and kwargs.get("data_files"):
            check_data(leaf, kwargs["data_files"], num_fewshot)


def _index_for(names: list[str], paths: list[Path]) -> tuple[dict, bool]:
    """The include paths' index, over lm-eval's packaged tasks only when a name needs them."""
    from lm_eval.tasks._index import TaskIndex

    with _quiet_index():
        index = TaskIndex.build(paths) if paths else {}
    if all(n in index for n in names):
        return index, False
    return {**packaged_index(), **index}, True  # later paths override earlier ones, as in TaskManager


_PACKAGED: dict | None = None


def packaged_index() -> dict:
    """lm-eval's built-in task index, built once per process (the slow part: ~14,700 YAML files)."""
    global _PACKAGED
    if _PACKAGED is None:
        from lm_eval import tasks as packaged
        from lm_eval.tasks._index import TaskIndex

        with _quiet_index():
            _PACKAGED = TaskIndex.build([Path(packaged.__file__).parent])
    return dict(_PACKAGED)


def manager_from_index(index: dict):
    """A TaskManager over an index built already (TaskManager() would walk every directory again)."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._factory import TaskFactory
    from lm_eval.tasks._index import Kind

    manager = TaskManager.__new__(TaskManager)
    manager.include_path, manager.metadata = None, None
    manager._factory = TaskFactory(meta=None)
    manager._index = index
    manager._all_tasks = sorted(index)
    manager._all_subtasks = sorted(k for k, e in index.items() if e.kind in (Kind.TASK, Kind.PY_TASK))
    manager._all_groups = sorted(k for k, e in index.items() if e.kind == Kind.GROUP)
    manager._all_tags = sorted(k for k, e in index.items() if e.kind == Kind.TAG)
    return manager


def _leaves(name: str, index: dict, seen: set[str]) -> Iterator[Leaf]:
    from lm_eval.tasks._index import Kind

    if name in seen:
        return
    seen.add(name)
    entry = index.get(name)
    if entry is None:
        raise TaskError(f"unknown task {name!r} (named by a group or tag)")
    if entry.kind == Kind.TAG:
        for child in sorted(entry.tags):
            yield from _leaves(child, index, seen)
    elif entry.kind == Kind.GROUP:
        children = entry.cfg.get("task") or []
        for child in children if isinstance(children, list) else [children]:
            if isinstance(child, dict):  # an inline task or group of the group's YAML
                child_name = child.get("task") or child.get("group")
                if isinstance(child_name, str) and child_name in index:
                    yield from _leaves(child_name, index, seen)
                elif "task" in child:
                    yield Leaf(str(child["task"]), entry.yaml_path, child)
            else:
                yield from _leaves(str(child), index, seen)
    elif entry.kind == Kind.PY_TASK:
        raise TaskError(f"task {name!r} is a Python task class; motif eval runs YAML tasks")
    else:
        yield Leaf(name, entry.yaml_path, entry.cfg or {})


# Generation settings that leave greedy decoding or plain sampling as it is.
NEUTRAL_GENERATION = {"top_p": (1.0, None), "top_k": (0, None), "num_beams": (1, None), "repetition_penalty": (1.0,)}


def sampling_temperature(kwargs: dict, where: str = "") -> float:
    """The temperature a task's `generation_kwargs` ask for: 0 (greedy) unless `do_sample` with T > 0.

    Settings the motif decoder does not implement (beam search, top-p, ...) are refused by name
    rather than silently ignored: the scores would not be the task's.
    """
    kwargs = dict(kwargs)
    do_sample = kwargs.pop("do_sample", None)
    try:
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    except (TypeError, ValueError):
        raise TaskError(f"{where}generation_kwargs.temperature: expected a number >= 0") from None
    for key, neutral in NEUTRAL_GENERATION.items():
        if key in kwargs and kwargs[key] in neutral:
            kwargs.pop(key)
    for key in ("until", "max_gen_toks"):  # lm-eval's own, applied by HFLM.generate_until
        kwargs.pop(key, None)
    if kwargs:
        raise TaskError(
            f"{where}generation_kwargs: {', '.join(sorted(kwargs))} not supported by the motif model "
            "(it decodes greedily, or samples with do_sample and temperature)"
        )
    if do_sample is False or temperature <= 0:
        return 0.0
    return temperature


# ---- local data ------------------------------------------------------------------------------------


def data_file(data_dir: Path, task: str, split: str) -> Path:
    """Where a split of a task lives in a local data directory."""
    return data_dir / task / f"{split}.jsonl"


def shadow_config(leaf: Leaf, data_dir: Path, num_fewshot: int | None) -> dict[str, Any]:
    """The override YAML that makes `leaf` read `<data_dir>/<task>/<split>.jsonl`; missing files refused."""
    if leaf.yaml_path is None:
        raise TaskError(f"task {leaf.name!r} has no YAML file of its own; it cannot read local data")
    data_dir = data_dir.resolve()
    needed = [leaf.eval_split()]
    if leaf.shots(num_fewshot) > 0:
        needed.append(leaf.fewshot_split())
    files: dict[str, str] = {}
    for split in dict.fromkeys(s for s in needed if s):
        path = data_file(data_dir, leaf.name, split)
        if not path.is_file():
            raise TaskError(
                f"missing local data: {path} (task {leaf.name}, split {split}; "
                "layout <data_dir>/<task>/<split>.jsonl, see docs/evaluation.md)"
            )
        files[split] = str(path)
    config: dict[str, Any] = {
        "task": leaf.name,
        "include": str(leaf.yaml_path.resolve()),
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
    }
    for key in SPLIT_KEYS:  # a split that is neither needed nor present locally is not declared
        split = leaf.config.get(key)
        if split and split not in files:
            optional = data_file(data_dir, leaf.name, split)
            if optional.is_file():
                files[split] = str(optional)
            else:
                config[key] = None
    return config


def download(plan: TaskPlan, data_dir: Path, progress: bool = False) -> list[Path]:
    """Write every split the leaves declare to `<data_dir>/<task>/<split>.jsonl` (needs the hub, or the files).

    The data comes from where the task's YAML says (`dataset_path`, `dataset_name`,
    `dataset_kwargs`), read with `datasets` exactly as lm-eval would read it.
    """
    import datasets
    from tqdm import tqdm

    written = []
    for leaf in tqdm(list(plan.leaves.values()), desc="downloading task data", disable=not progress):
        cfg = leaf.config
        kwargs = cfg.get("dataset_kwargs") or {}
        try:
            ds = datasets.load_dataset(cfg["dataset_path"], cfg.get("dataset_name"), **kwargs)
        except Exception as e:  # datasets raises many types (hub, network, missing files)
            where = f"{cfg.get('dataset_path')}" + (f" ({cfg['dataset_name']})" if cfg.get("dataset_name") else "")
            raise TaskError(f"task {leaf.name}: cannot read {where}: {type(e).__name__}: {e}") from None
        for split in dict.fromkeys(cfg.get(k) for k in SPLIT_KEYS if cfg.get(k)):
            if split not in ds:
                continue
            path = data_file(data_dir, leaf.name, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            ds[split].to_json(str(tmp), force_ascii=False, lines=True)
            tmp.replace(path)
            written.append(path)
    return written


def write_shadows(shadows: dict[str, dict[str, Any]], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, config in shadows.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def check_local_files(leaf: Leaf) -> None:
    """A task that reads local files (dataset_path json/csv/..., data_files): every file must exist."""
    path = leaf.config.get("dataset_path")
    kwargs = leaf.config.get("dataset_kwargs") or {}
    where = f"task {leaf.name} ({leaf.yaml_path})"
    if path in LOCAL_BUILDERS:
        data_files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
        if not data_files:
            raise TaskError(f"{where}: dataset_path {path} needs dataset_kwargs.data_files")
        for key, value in _files(data_files):
            for file in value if isinstance(value, list) else [value]:
                if not any(c in str(file) for c in "*?[") and not Path(file).is_file():
                    raise TaskError(f"missing local data: {file} ({where}: dataset_kwargs.data_files{key})")
    elif isinstance(path, str) and path.startswith(("/", "./", "../")) and not Path(path).exists():
        raise TaskError(f"missing local data: {path} ({where}: dataset_path)")


def _files(data_files) -> Iterator[tuple[str, Any]]:
    if isinstance(data_files, dict):
        for split, value in data_files.items():
            yield f".{split}", value
    else:
        yield "", data_files


@contextlib.contextmanager
def _quiet_index() -> Iterator[None]:
    """lm-eval warns once per shadowed task ("overrides existing task"); that is the point here."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
