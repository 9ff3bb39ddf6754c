"""`motif mix sweep` and `motif mix fit`: tune a stage's Korean:English ratio on proxy runs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

HELP = "Tune a stage's data mix: proxy trainings at several mixtures, a fitted mixing law, a chosen ratio"
DESCRIPTION = """\
Tune the Korean:English ratio of a stage on cheap proxy trainings (docs/data-mix.md).

  motif mix sweep STAGE_FILE --ko 0.1,0.3,0.5,0.7,0.9 [--repeats R] [--steps N] [--out DIR] [--local | --helm]
      one proxy stage file per mixture, then runs them: parallel local processes, or one Helm
      release per proxy queued through Kueue; --repeats R trains each share R times with other
      data seeds (the noise the choice must beat); --sources N samples N mixtures of all the
      stage's sources from a Dirichlet instead (RegMix)
  motif mix fit SWEEP_DIR [--rule constrained|weighted] [--write STAGE_FILE]
      fits the mixing law L(r) = c + k * exp(t . r) per language to the proxies' held-out bits
      per byte, prints the table, the fit's leave-one-out error and 95% bootstrap intervals
      (parameters, chosen share), writes a PNG, and picks the mixture by the rule (--write sets
      it in a stage file, a diff printed, comments kept); a fit with no degrees of freedom left
      (mixtures <= parameters + 1) or an exponent at its bound is marked UNVALIDATED

exit status: 0 done; 1 a proxy failed (sweep) or no mixture meets the rule's bound (fit --write);
2 bad input (one line naming the file, flag or key; nothing written).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mix_command", metavar="SUBCOMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser("sweep", help="write and run one proxy per mixture", description=SWEEP_HELP, formatter_class=fmt)
    s.add_argument(
        "stage_file", metavar="STAGE_FILE", help="the stage to tune (its motif.eval.heldout is the yardstick)"
    )
    grid = s.add_mutually_exclusive_group()
    grid.add_argument(
        "--ko",
        default="0.1,0.3,0.5,0.7,0.9",
        metavar="SHARES",
        help="Korean shares, one proxy each (default %(default)s)",
    )
    grid.add_argument(
        "--sources",
        type=int,
        metavar="N",
        help="N proxies over all the stage's sources, sampled from a Dirichlet around their natural shares (RegMix)",
    )
    s.add_argument("--steps", type=int, metavar="N", help="optimizer steps per proxy (default: 10%% of the stage's)")
    s.add_argument("--out", metavar="DIR", help="sweep directory (default mix/<stage name>); proxies write under it")
    s.add_argument("--start", metavar="CHECKPOINT", help="train the proxies from this smaller model of the same family")
    s.add_argument(
        "--points",
        type=int,
        default=4,
        metavar="N",
        help="held-out scoring points per proxy, the last at its end (default 4; the fit uses each)",
    )
    s.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="R",
        help="--ko: train each share R times with different data seeds, to measure the noise (default 1)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the Dirichlet sampler (default 0)")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run the proxies here as parallel processes (default)")
    where.add_argument("--helm", action="store_true", help="one Helm release per proxy, queued through Kueue")
    s.add_argument("--jobs", type=int, metavar="N", help="--local: proxies at once (default: all)")
    s.add_argument("--nproc", type=int, default=1, metavar="N", help="--local: processes per proxy (default 1)")
    s.add_argument(
        "--queue", metavar="NAME", help="--helm: Kueue LocalQueue (default: the stage file's kueue.queueName)"
    )
    s.add_argument("-n", "--namespace", default="motif", help="--helm: namespace (default motif)")
    s.add_argument(
        "--dry-run",
        action="store_true",
        help="write the proxy files only; with --helm also render, lint, validate and helm install --dry-run=client",
    )
    s.add_argument("--json", action="store_true", help="print the sweep manifest as JSON")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(_mix=(run_sweep, SweepRequest))

    f = sub.add_parser("fit", help="fit the mixing law and choose a mixture", description=FIT_HELP, formatter_class=fmt)
    f.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a directory written by `motif mix sweep`")
    f.add_argument("--rule", choices=("constrained", "weighted"), default="constrained", help="default: constrained")
    f.add_argument(
        "--epsilon",
        type=float,
        default=0.01,
        metavar="BPB",
        help="constrained: how far above the start checkpoint's loss the other languages may go (default 0.01)",
    )
    f.add_argument(
        "--weights", metavar="LANG=W,...", help="weighted: per-language weights summing to 1 (default equal)"
    )
    f.add_argument(
        "--baseline",
        metavar="LANG=BPB,...",
        help="the start checkpoint's held-out bits per byte (default: scored here)",
    )
    f.add_argument("--write", metavar="STAGE_FILE", help="set the chosen weights in this stage file (diff printed)")
    f.add_argument("--allow-missing", action="store_true", help="fit without failed or unfinished proxies")
    f.add_argument("--png", metavar="PATH", help="plot path (default SWEEP_DIR/mix.png)")
    f.add_argument("--json", action="store_true", help="print the result as JSON")
    f.set_defaults(_mix=(run_fit, FitRequest))

    t = sub.add_parser(
        "trial",
        help="train one proxy on every rank (a Katib trial's pods)",
        description=TRIAL_HELP,
        formatter_class=fmt,
    )
    t.add_argument("stage_file", metavar="STAGE_FILE", help="the stage being tuned (/etc/motif/stage.yaml in a pod)")
    t.add_argument("--ko", required=True, metavar="SHARE", help="the proxy's Korean share (0 < share < 1)")
    t.add_argument("--steps", type=int, required=True, metavar="N", help="optimizer steps of the proxy")
    t.add_argument("--dir", required=True, metavar="DIR", help="the proxy's directory (its checkpoint.dir)")
    t.add_argument(
        "--result", metavar="FILE", help="result file for Katib's File metrics collector (default DIR/result.json)"
    )
    t.set_defaults(_mix=(run_trial, TrialRequest))


SWEEP_HELP = """\
Write one proxy stage file per mixture into the sweep directory, then run them.

A proxy is the stage at another mixture, shortened to --steps with its schedule compressed: the
same start checkpoint (or --start), the same held-out sets (motif.eval.heldout, scored
motif.eval.every_steps and at the end), everything it writes under SWEEP_DIR/<proxy>/. --local
runs them here as parallel `motif train` processes (a stage that grows is grown once first);
--helm installs one release of charts/motif-stage per proxy, queued in a Kueue LocalQueue, after
rendering, linting and validating each. A sweep run again keeps its finished proxies.
"""

FIT_HELP = """\
Fit the mixing law per language to the proxies' held-out bits per byte and pick a mixture.

Rules: constrained (default) minimises the Korean loss subject to every other language staying
within --epsilon bits per byte of the start checkpoint's loss (--baseline, else the proxies'
step-0 records, else scored here once and kept in SWEEP_DIR/baseline.json); weighted minimises
the --weights sum. Prints a
table per proxy with each one's leave-one-out error, the choice at every scored step, writes
SWEEP_DIR/mix.png and SWEEP_DIR/fit.json. A failed or unfinished proxy is an error unless
--allow-missing.
"""


TRIAL_HELP = """\
Train one proxy of STAGE_FILE at Korean share --ko for --steps steps, everything under --dir, then
(rank 0) write its held-out bits per byte as a Katib File-collector result (JSON lines, values as
strings: objective = Korean held-out bpb, heldout_bpb_<language> per language). Run it on every
rank, as `motif train` is: `motif-torchrun -m motif mix trial ...` (what the chart's Katib
Experiment runs in each trial).
"""


def run(args: argparse.Namespace) -> int:
    from motif.request import from_namespace

    work, request = args._mix  # each subcommand's work and its typed request
    return work(from_namespace(request, args))


@dataclass(frozen=True)
class SweepRequest:
    """What `motif mix sweep` was asked to do."""

    stage_file: str
    ko: str = "0.1,0.3,0.5,0.7,0.9"
    sources: int | None = None
    steps: int | None = None
    out: str | None = None
    start: str | None = None
    points: int = 4
    repeats: int = 1
    seed: int = 0
    helm: bool = False
    jobs: int | None = None
    nproc: int = 1
    queue: str | None = None
    namespace: str = "motif"
    dry_run: bool = False
    json: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class FitRequest:
    """What `motif mix fit` was asked to do."""

    sweep_dir: str
    rule: str = "constrained"
    epsilon: float = 0.01
    weights: str | None = None
    baseline: str | None = None
    write: str | None = None
    allow_missing: bool = False
    png: str | None = None
    json: bool = False


@dataclass(frozen=True)
class TrialRequest:
    """What `motif mix trial` was asked to do: one proxy, trained on every rank."""

    stage_file: str
    ko: str
    steps: int
    dir: str
    result: str | None = None


def run_trial(args: TrialRequest) -> int:
    from motif.mix import trial

    return trial.run(args)


# ---- sweep -------------------------------------------------------------------------------------


def run_sweep(args: SweepRequest) -> int:
    from motif.config import load_stage
    from motif.errors import MotifError
    from motif.mix import mixtures
    from motif.mix import sweep as sw

    runner = "helm" if args.helm else "local"
    if args.steps is not None and args.steps <= 0:
        raise MotifError(f"--steps: expected > 0, got {args.steps}")
    if args.nproc <= 0 or (args.jobs is not None and args.jobs <= 0):
        raise MotifError("--jobs / --nproc: expected > 0")
    if args.points <= 0:
        raise MotifError(f"--points: expected > 0, got {args.points}")
    if args.repeats <= 0:
        raise MotifError(f"--repeats: expected > 0, got {args.repeats}")
    if args.repeats > 1 and args.sources is not None:
        raise MotifError("--repeats: only with a --ko grid (each --sources proxy is a mixture of its own)")
    stage_path = Path(args.stage_file)
    stage = load_stage(stage_path)
    doc = sw.load_document(stage_path)
    sw.heldout_languages(doc["motif"], str(stage_path))
    workdir = Path.cwd() if runner == "local" else Path(str(doc.get("workingDir", "/workspace")))
    if args.sources is not None:
        if args.sources < 3:
            raise MotifError(f"--sources: {args.sources} mixtures; the fit needs at least 3 (more with more sources)")
        if len(stage.data.sources) < 2:
            raise MotifError(f"{stage_path}: motif.data.sources: --sources needs at least two sources")
        centre, centre_from = mixtures.natural_shares(stage.data.sources, Path.cwd())
        proxies = sw.plan_dirichlet(stage, args.sources, centre, args.seed)
        mode = "dirichlet"
    else:
        shares = mixtures.parse_shares(args.ko)
        if len(shares) < 3:
            raise MotifError(
                f"--ko: {len(shares)} shares; the mixing law has 3 parameters per language, so a sweep needs at least 3"
            )
        proxies = sw.plan_grid(stage, shares, str(stage_path), args.repeats)
        centre, centre_from, mode = None, None, "grid"
    sw.check_names(proxies, str(stage_path))
    queue = None
    if runner == "helm":
        queue = args.queue or (doc.get("kueue") or {}).get("queueName")
        if not queue:
            raise MotifError(
                "--helm: no Kueue LocalQueue (pass --queue NAME or set kueue.queueName in the stage file): "
                "without one the proxies would all start at once and fail for lack of capacity"
            )
    steps = args.steps or sw.default_steps(stage)
    out = args.out or f"mix/{stage.name}"
    start = args.start or stage.start_checkpoint
    sweep = sw.Sweep(
        stage_file=str(stage_path.resolve()),
        stage=stage.name,
        mode=mode,
        steps=steps,
        runner=runner,
        out=out,
        workdir=str(workdir),
        sources=[s.name for s in stage.data.sources],
        languages={s.name: s.language for s in stage.data.sources},
        stage_weights={s.name: s.weight for s in stage.data.sources},
        start_checkpoint=start,
        proxies=proxies,
        centre=centre,
        centre_from=centre_from,
        seed=args.seed,
    )
    docs = {}
    for p in proxies:
        d = sw.proxy_document(
            doc,
            stage,
            p,
            steps=steps,
            home=sw.proxy_home(out, p),
            runner=runner,
            nproc=args.nproc,
            start=args.start,
            queue=queue,
            points=args.points,
        )
        sw.validate_proxy(d, f"{out}/{p.file}")
        docs[p.name] = d
    sweep_dir = Path(out)
    if (sweep_dir / sw.MANIFEST).is_file():
        old = sw.read_manifest(sweep_dir)
        if old.start_checkpoint != sweep.start_checkpoint and sw.same_sweep(
            old, sw.Sweep(**{**vars(sweep), "start_checkpoint": old.start_checkpoint})
        ):
            raise MotifError(
                f"{sweep_dir}: holds this sweep's proxies trained from another start checkpoint "
                f"({old.start_checkpoint}, not {sweep.start_checkpoint}); they cannot be reused: choose another --out"
            )
        if not sw.same_sweep(old, sweep):
            raise MotifError(
                f"{sweep_dir}: holds another sweep (of {old.stage_file}, {len(old.proxies)} proxies x {old.steps} "
                "steps); choose another --out"
            )
    if runner == "helm":
        from motif.mix import helm

        for p in proxies:  # before anything is written: a values file the chart refuses is bad input
            helm.check(docs[p.name], helm.release(p.name), args.namespace)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for p in proxies:
        sw.write_atomic(sweep_dir / p.file, sw.dump_proxy(docs[p.name], args.stage_file))
    sw.write_manifest(sweep_dir, sweep)
    _print_plan(sweep, mode, centre_from, args)
    failed = 0
    if runner == "local" and not args.dry_run:
        from motif.mix import local

        grows = args.start is None and stage.growth is not None
        failed = local.run(
            sweep_dir,
            sweep,
            workdir,
            jobs=args.jobs or len(proxies),
            nproc=args.nproc,
            grows=grows,
            quiet=args.quiet,
        )
    elif runner == "helm":
        from motif.mix import helm

        helm.install(sweep_dir, sweep, docs, namespace=args.namespace, dry_run=args.dry_run)
        sw.write_manifest(sweep_dir, sweep)
    if args.json:
        print(sweep.to_json(), end="")
    else:
        _print_outcome(sweep, sweep_dir, runner, args)
    return 1 if failed else 0


def _print_plan(sweep, mode: str, centre_from: str | None, args: SweepRequest) -> None:
    if args.json:
        return
    how = "Korean-share grid" if mode == "grid" else f"Dirichlet samples around {centre_from}"
    if args.repeats > 1:
        how += f", each share {args.repeats} times with other data seeds"
    where = "here" if sweep.runner == "local" else f"as Helm releases in namespace {args.namespace}"
    print(f"sweep of {sweep.stage}: {len(sweep.proxies)} proxies x {sweep.steps} steps ({how}), {where}")
    for p in sweep.proxies:
        weights = ", ".join(f"{s} {w:g}" for s, w in p.weights.items())
        seed = f", data seed {p.data_seed}" if p.data_seed is not None else ""
        print(f"  {p.name}: ko share {p.ko_share:.3g} ({weights}{seed})")
    mixtures_n = len({round(p.ko_share, 6) for p in sweep.proxies}) if mode == "grid" else len(sweep.proxies)
    need = len(sweep.sources) + 3 if mode == "dirichlet" else 5  # the law's parameters + 2
    if mixtures_n < need:
        print(
            f"note: {mixtures_n} mixtures; the fit of a law with {need - 2} parameters is validated (tested on "
            f"mixtures it did not see) from {need} on: `motif mix fit` will mark this choice unvalidated"
        )


def _print_outcome(sweep, sweep_dir: Path, runner: str, args: SweepRequest) -> None:
    if runner == "local" and args.dry_run:
        print(f"proxy stage files in {sweep_dir}/ (not run: --dry-run)")
        return
    if runner == "helm":
        verb = "checked (dry run)" if args.dry_run else "installed"
        print(f"{len(sweep.proxies)} releases {verb}; manifests in {sweep_dir}/*.manifest.yaml")
        if not args.dry_run:
            print(f"watch: kubectl -n {args.namespace} get pytorchjobs -l app.kubernetes.io/instance")
        print(f"then, where {sweep.out}/ is readable: motif mix fit {sweep.out}")
        return
    for p in sweep.proxies:
        print(
            f"  {p.name}: {p.status}"
            + (f" (exit status {p.exit_code}, log {sweep_dir / p.log})" if p.status == "failed" and p.exit_code else "")
            + (
                " (no held-out record at its last step: motif.eval.heldout not scored)"
                if p.status == "failed" and not p.exit_code
                else ""
            )
        )
    failed = sum(p.status == "failed" for p in sweep.proxies)
    if failed:
        print(
            f"{failed} of {len(sweep.proxies)} proxies failed: run the same command again to resume them, "
            f"or fit without them: motif mix fit {sweep_dir} --allow-missing"
        )
    else:
        print(f"next: motif mix fit {sweep_dir}")


# ---- fit ---------------------------------------------------------------------------------------


def _parse_baseline(text: str | None) -> dict[str, float] | None:
    from motif.errors import MotifError

    if not text:
        return None
    out = {}
    for part in text.split(","):
        lang, sep, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not lang.strip() or not math.isfinite(number) or number <= 0:
            raise MotifError(f"--baseline: {part.strip()!r}: expected LANG=BPB with BPB > 0 (e.g. en=1.05)")
        out[lang.strip()] = number
    return out


def run_fit(args: FitRequest) -> int:
    from motif.config import load_stage
    from motif.errors import MotifError
    from motif.mix import baseline, report, stagefile
    from motif.mix.fit import fit_sweep, source_weights
    from motif.mix.plot import plot_fit
    from motif.mix.rules import Rule, parse_weights
    from motif.mix.sweep import read_manifest, write_atomic

    if args.weights and args.rule != "weighted":
        raise MotifError("--weights: only with --rule weighted")
    if not math.isfinite(args.epsilon) or args.epsilon < 0:
        raise MotifError(f"--epsilon: expected a number >= 0, got {args.epsilon}")
    rule = Rule(kind=args.rule, epsilon=args.epsilon, weights=parse_weights(args.weights) if args.weights else {})
    given = _parse_baseline(args.baseline)
    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        raise MotifError(f"{sweep_dir}: no such sweep directory")
    target = None
    if args.write:
        target = load_stage(args.write)  # a stage file that is not valid is refused before any fit
    sweep = read_manifest(sweep_dir)
    result = fit_sweep(
        sweep_dir, rule, given, args.allow_missing, baseline_fn=lambda: baseline.measure(sweep_dir, sweep)
    )
    if rule.weights:
        unknown = sorted(set(rule.weights) - set(result.languages))
        if unknown:
            raise MotifError(
                f"--weights: no held-out loss for language {unknown[0]} (have: {', '.join(result.languages)})"
            )
    new_weights = None
    if target is not None:
        new_weights = source_weights(sweep, result.shares, target.data.sources, args.write)
        stagefile.set_weights(Path(args.write).read_text(), new_weights, args.write)  # refuse before writing
    png = Path(args.png) if args.png else sweep_dir / "mix.png"
    plot_fit(result, png)
    summary = report.as_json(result, str(png))
    write_atomic(sweep_dir / "fit.json", json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for r in result.missing:
            print(f"left out: {r.proxy.name} {r.problem}")
        print(report.proxies_table(result))
        print()
        for line in report.fit_lines(result):
            print(line)
        print(report.step_line(result))
        print(f"rule: {rule.describe(result.languages)}")
        print(report.chosen_line(result))
        print(report.validation_line(result))
        print(f"plot: {png}")
    if target is None:
        return 0
    if not result.choice.feasible:
        print(f"{args.write}: not written: no swept mixture meets the rule's bound", file=sys.stderr)
        return 1
    old, new = stagefile.write_weights(Path(args.write), new_weights)
    text = stagefile.diff(old, new, args.write)
    out = sys.stderr if args.json else sys.stdout
    print(text or f"{args.write}: already has these weights (unchanged)\n", end="", file=out)
    return 0
