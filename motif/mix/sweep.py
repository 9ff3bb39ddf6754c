"""A sweep: one proxy stage file per mixture, derived from one stage file, and its manifest.

A proxy is the stage itself at another mixture, shortened: the same start checkpoint (or
`--start`, a smaller model of the same family), the same data and held-out sets, `steps`
optimizer steps with the stage's schedule compressed to them, held-out scoring at a few points of
the run (`motif.eval.every_steps`), and everything it writes under its own directory of the sweep
(`<out>/<proxy>/`: checkpoints, the final model, metrics.jsonl), which is also its
`motif.checkpoint.dir`, the one path a chart volume with `stageWritableOnly` lets it write.

The manifest, `<out>/sweep.json`, names the proxies, their mixtures and how far each got; `motif
mix fit` reads it and each `<out>/<proxy>/metrics.jsonl`.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from motif.config import StageConfig, parse_stage
from motif.errors import MotifError
from motif.mix import mixtures

FORMAT = "motif-mix-sweep/1"
MANIFEST = "sweep.json"
# Held-out scoring points per proxy run, the last at its end (the trainer also scores its start).
EVAL_POINTS = 4
# Default proxy length: this share of the stage's steps (5 proxies then cost half the stage).
DEFAULT_STEPS_SHARE = 0.1
# Helm release names are at most 53 characters; the chart names objects after the release.
MAX_RELEASE = 53


@dataclass
class Proxy:
    name: str  # motif.name of the proxy; its directory and stage file are named after it
    weights: dict[str, float]  # source name -> weight
    ko_share: float
    status: str = "pending"  # pending | running | done | failed | submitted
    exit_code: int | None = None
    data_seed: int | None = None  # a repeat of a mixture (--repeats): its motif.data.seed; None: the stage's

    @property
    def file(self) -> str:
        return f"{self.name}.yaml"

    @property
    def log(self) -> str:
        return f"{self.name}.log"


@dataclass
class Sweep:
    stage_file: str
    stage: str  # the stage's motif.name
    mode: str  # grid (one Korean share per proxy) | dirichlet (whole weight vectors, RegMix)
    steps: int
    runner: str  # local | helm
    out: str  # --out as given: proxies' paths are under it, relative to the working directory
    workdir: str  # where relative paths of the stage resolve (local: the cwd; helm: the pods' workingDir)
    sources: list[str]
    languages: dict[str, str]  # source -> language
    stage_weights: dict[str, float]  # source -> weight in the stage file
    start_checkpoint: str | None
    proxies: list[Proxy]
    centre: list[float] | None = None  # dirichlet: the centre of the sampler, per source
    centre_from: str | None = None
    seed: int = 0
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def shares(self, proxy: Proxy) -> list[float]:
        """The proxy's mixture as the fit sees it: (Korean, rest) in a grid, per source otherwise."""
        if self.mode == "grid":
            return [proxy.ko_share, 1.0 - proxy.ko_share]
        return [proxy.weights[s] for s in self.sources]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sweep:
        d = dict(d)
        d["proxies"] = [Proxy(**p) for p in d["proxies"]]
        return cls(**d)


def read_manifest(sweep_dir: Path) -> Sweep:
    path = sweep_dir / MANIFEST
    if not path.is_file():
        raise MotifError(f"{sweep_dir}: no {MANIFEST} (not a sweep directory written by `motif mix sweep`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        if not isinstance(data.get("proxies"), list) or not all(isinstance(p, dict) for p in data["proxies"]):
            raise ValueError("proxies: expected a list of objects")
        sweep = Sweep.from_dict(data)
        for p in sweep.proxies:
            if not isinstance(p.name, str) or not isinstance(p.weights, dict):
                raise ValueError(f"proxies: {p.name!r}: expected a name and a weights object")
        return sweep
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
        raise MotifError(f"{path}: not a readable sweep manifest: {e}") from None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_manifest(sweep_dir: Path, sweep: Sweep) -> None:
    write_atomic(sweep_dir / MANIFEST, sweep.to_json())


# ---- planning --------------------------------------------------------------------------------


def default_steps(stage: StageConfig) -> int:
    return max(1, round(stage.train.max_steps * DEFAULT_STEPS_SHARE))


def share_tag(share: float) -> str:
    """0.3 -> ko30, 0.125 -> ko12-5: readable, and valid in a DNS label."""
    return "ko" + f"{share * 100:.4g}".replace(".", "-")


def plan_grid(stage: StageConfig, shares: list[float], where: str, repeats: int = 1) -> list[Proxy]:
    """One proxy per share; with `repeats` > 1, that many per share, each with its own data seed
    (the stage's motif.data.seed + 0, 1, ...), named ...-ko30-s1, -s2, ..."""
    proxies = []
    for share in shares:
        w = mixtures.weights_for_share(stage.data.sources, share, where)
        weights = dict(zip((s.name for s in stage.data.sources), w, strict=True))
        name = f"{stage.name}-mix-{share_tag(share)}"
        if repeats == 1:
            proxies.append(Proxy(name=name, weights=weights, ko_share=share))
            continue
        for r in range(repeats):
            seed = stage.data.seed + r
            proxies.append(Proxy(name=f"{name}-s{r + 1}", weights=dict(weights), ko_share=share, data_seed=seed))
    names = [p.name for p in proxies]
    for i, p in enumerate(proxies):
        if p.name in names[:i]:
            other = proxies[names.index(p.name)]
            raise MotifError(
                f"--ko: shares {other.ko_share:g} and {p.ko_share:g} both name proxy {p.name} "
                "(shares are named to 4 significant digits); use shares that differ there"
            )
    return proxies


def plan_dirichlet(stage: StageConfig, n: int, centre: list[float], seed: int) -> list[Proxy]:
    names = [s.name for s in stage.data.sources]
    width = max(2, len(str(n)))
    proxies = []
    for i, w in enumerate(mixtures.dirichlet(centre, n, seed)):
        weights = dict(zip(names, w, strict=True))
        share = mixtures.language_share(stage.data.sources, w)
        proxies.append(Proxy(name=f"{stage.name}-mix-{i + 1:0{width}d}", weights=weights, ko_share=round(share, 6)))
    return proxies


def check_names(proxies: list[Proxy], where: str) -> None:
    for p in proxies:
        release = f"motif-{p.name}"
        if len(release) > MAX_RELEASE:
            raise MotifError(
                f"{where}: motif.name: proxy release {release!r} is {len(release)} characters, Helm allows "
                f"{MAX_RELEASE}; shorten the stage name"
            )


# ---- proxy stage files -------------------------------------------------------------------------


def _scaled(value: int, steps: int, max_steps: int) -> int:
    """A schedule length compressed from the stage's steps to the proxy's (0 stays 0)."""
    if value <= 0:
        return value
    return max(1, min(steps, round(value * steps / max_steps)))


def heldout_languages(section: dict[str, Any], where: str) -> list[str]:
    """Languages of `motif.eval.heldout`, which the sweep needs (ko and at least one other)."""
    heldout = (section.get("eval") or {}).get("heldout") or []
    languages = sorted({h.get("language") for h in heldout if isinstance(h, dict) and h.get("language")})
    if mixtures.TARGET_LANGUAGE not in languages or len(languages) < 2:
        have = ", ".join(languages) or "none"
        raise MotifError(
            f"{where}: motif.eval.heldout: needs held-out sources in {mixtures.TARGET_LANGUAGE} and another "
            f"language (have: {have}); the proxies are compared on them"
        )
    return languages


def proxy_document(
    doc: dict[str, Any],
    stage: StageConfig,
    proxy: Proxy,
    *,
    steps: int,
    home: str,
    runner: str,
    nproc: int,
    start: str | None,
    queue: str | None,
    points: int = EVAL_POINTS,
) -> dict[str, Any]:
    """The proxy's stage file (Helm values and trainer config), from the stage file's document.

    `home` is the proxy's directory (its checkpoint.dir); `runner` local sets a one-node layout of
    `nproc` processes, helm sets the chart keys of a proxy release, trial (a Katib trial) keeps
    the stage's layout."""
    d = copy.deepcopy(doc)
    m = d["motif"]
    m["name"] = proxy.name
    for src in m["data"]["sources"]:
        src["weight"] = proxy.weights[src["name"]]
    if proxy.data_seed is not None:
        m["data"]["seed"] = proxy.data_seed
    train = m["train"]
    max_steps = stage.train.max_steps
    train["max_steps"] = steps
    optim = m.get("optim", {})
    for key in ("warmup_steps", "rewarm_steps"):
        if key in optim:
            optim[key] = _scaled(optim[key], steps, max_steps)
    if start is not None:
        # A smaller model of the same family: the proxies train it as is, without the stage's growth.
        m["input"] = start
        m.pop("growth", None)
        m.pop("model", None)
        if train.get("freeze") == "new_blocks":
            train["freeze"] = "none"
    elif m.get("growth") and m["growth"].get("ramp_steps"):
        m["growth"]["ramp_steps"] = _scaled(m["growth"]["ramp_steps"], steps, max_steps)
    m["output"] = f"{home}/final"
    ckpt = m["checkpoint"]
    ckpt["dir"] = home
    ckpt["every_steps"] = min(ckpt.get("every_steps", steps), steps)
    ckpt["keep_last"] = 1
    if (m.get("metrics") or {}).get("jsonl"):
        m["metrics"].pop("jsonl")  # the default, <checkpoint.dir>/metrics.jsonl, is where fit reads
    ev = m["eval"]
    ev["every_steps"] = max(1, steps // points)
    if ev.get("out"):
        ev["out"] = f"{home}/eval"
    if runner == "local":
        par = m.setdefault("parallel", {})
        par["nodes"], par["procs_per_node"] = 1, nproc
    elif runner == "helm":
        d.pop("fullnameOverride", None)  # each proxy is its own release, named after it
        d.setdefault("kueue", {})["queueName"] = queue
        # The stage's grown checkpoint is grown once, before the sweep; the proxies only read it.
        d.setdefault("grow", {})["enabled"] = False
        mon = d.setdefault("monitoring", {})
        for part in ("rules", "dashboards"):
            mon.setdefault(part, {})["enabled"] = False  # one copy per cluster, installed with the stages
    return d


def proxy_home(out: str, proxy: Proxy) -> str:
    return str(PurePosixPath(out) / proxy.name)


def validate_proxy(doc: dict[str, Any], where: str) -> StageConfig:
    return parse_stage(doc["motif"], source=where)


def dump_proxy(doc: dict[str, Any], stage_file: str) -> str:
    header = (
        f"# Proxy of {stage_file} for mixture tuning, written by `motif mix sweep`; the fit reads what it writes.\n"
        "# Helm values of charts/motif-stage and the trainer config, like every stage file.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)


def load_document(path: Path) -> dict[str, Any]:
    """The whole stage file (chart keys too): proxies are written from it."""
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("motif"), dict):
        raise MotifError(f"{path}: motif: missing; a stage file keeps the trainer config under a `motif:` key")
    return doc


def same_sweep(old: Sweep, new: Sweep) -> bool:
    """An earlier run of the same sweep (its finished proxies are kept, the others resumed)."""
    keys = ("stage_file", "mode", "steps", "runner", "sources", "start_checkpoint")
    return all(getattr(old, k) == getattr(new, k) for k in keys) and [(p.name, p.weights) for p in old.proxies] == [
        (p.name, p.weights) for p in new.proxies
    ]
