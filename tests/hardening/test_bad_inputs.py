"""A catalogue of bad inputs: stage files, growth targets, checkpoints, data and Helm values.

Each case goes through the real CLI (`motif.cli.main`, in this process: cheap) and must end with
exit status 2, exactly one line `motif CMD: error: ...` naming the file or key and what was
expected, no traceback, and no file created or changed (every file under the case's directory,
inputs and outputs, is hashed before and after). One case per kind is also run as its own
process, to check the exit status and stderr a user sees. Helm values go through the chart's
real render (`motif_dev.deploy.render`), as `helm install` would.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from motif_dev.deploy import render as r

from ..train.conftest import stage_section

Setup = Callable[[Path], list[str]]


# ---- assets ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """`single/` (one weights file) and `sharded/` (three shards and an index) of a tiny Llama."""
    from motif.model import Llama, ModelArgs
    from motif.model.checkpoint import save

    args = ModelArgs(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = Llama(args)
    model.init_weights(seed=0)
    root = tmp_path_factory.mktemp("ckpts")
    save(model, root / "single")
    save(model, root / "sharded", max_shard_bytes=200_000)
    assert len(list((root / "sharded").glob("model-*.safetensors"))) >= 3
    return root


@pytest.fixture
def case_dir(workdir, checkpoints) -> Path:
    """The trainer tests' working directory (data/ linked in) with copies of the checkpoints."""
    for name in ("single", "sharded"):
        shutil.copytree(checkpoints / name, workdir / name)
    return workdir


def _stage(path: Path, section: dict | None = None, text: str | None = None) -> str:
    file = path / "stage.yaml"
    file.write_text(text if text is not None else yaml.safe_dump({"motif": section}, sort_keys=False))
    return str(file.relative_to(path))


def stage_with(mutate: Callable[[dict], None], **overrides) -> Setup:
    def setup(d: Path) -> list[str]:
        section = stage_section("bad", **overrides)
        mutate(section)
        return ["train", _stage(d, section), "--metrics-port", "0"]

    return setup


def stage_text(text: str) -> Setup:
    return lambda d: ["train", _stage(d, text=text)]


def grow(*args: str, src: str = "single", dst: str = "grown") -> Setup:
    return lambda d: ["grow", src, dst, *args]


def grown_stage(command: str, **growth) -> Setup:
    """A stage that grows `single/` into `grown/` (through `motif grow --stage` or `motif train`)."""

    def setup(d: Path) -> list[str]:
        section = stage_section("bad", model=None, input="single", growth={"output": "grown", **growth})
        stage = _stage(d, section)
        return ["grow", "--stage", stage] if command == "grow" else ["train", stage, "--metrics-port", "0"]

    return setup


def broken(change: Callable[[Path], None], src: str = "single") -> Setup:
    def setup(d: Path) -> list[str]:
        change(d / src)
        return ["grow", src, "grown", "--layers", "4"]

    return setup


def _truncate(file: str, keep: int) -> Callable[[Path], None]:
    def change(ck: Path) -> None:
        path = ck / file
        path.write_bytes(path.read_bytes()[:keep])

    return change


def _config(**changes) -> Callable[[Path], None]:
    def change(ck: Path) -> None:
        cfg = json.loads((ck / "config.json").read_text())
        cfg.update(changes)
        (ck / "config.json").write_text(json.dumps(cfg))

    return change


def _int_weights(ck: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(ck / "model.safetensors"))
    save_file({k: (v * 100).to(torch.int32) for k, v in tensors.items()}, str(ck / "model.safetensors"))


def _pickle_only(ck: Path) -> None:
    (ck / "model.safetensors").unlink()
    # The opening bytes of a pickle (protocol 4); never loaded, only offered.
    (ck / "pytorch_model.bin").write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.")


def _index_to_missing(ck: Path) -> None:
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "model-99999-of-99999.safetensors"
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))


def _shard(ck: Path, i: int) -> Path:
    return sorted(ck.glob("model-*.safetensors"))[i]


def data_source(**source) -> Setup:
    def setup(d: Path) -> list[str]:
        section = stage_section("bad")
        section["data"]["sources"] = [{"name": "x", "language": "ko", "weight": 1.0, **source}]
        return ["train", _stage(d, section), "--metrics-port", "0"]

    return setup


def with_file(name: str, content: bytes, then: Setup) -> Setup:
    def setup(d: Path) -> list[str]:
        (d / name).write_bytes(content)
        return then(d)

    return setup


def _set(section: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    node = section
    for name in parents:
        node = node[int(name)] if isinstance(node, list) else node[name]
    if value is _DEL:
        del node[last]
    else:
        node[last] = value


_DEL = object()


def key(path: str, value=_DEL) -> Callable[[dict], None]:
    return lambda section: _set(section, path, value)


def _all(*fs: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda section: [f(section) for f in fs] and None


# (id, setup -> argv, fragments the one error line must hold: the file or key, and what was expected)
CATALOGUE: list[tuple[str, Setup, tuple[str, ...]]] = [
    # -- stage files
    ("stage-missing-key", stage_with(key("train.max_steps")), ("stage.yaml", "motif.train.max_steps", "missing")),
    (
        "stage-unknown-key",
        stage_with(key("train.max_step", 5)),
        ("stage.yaml", "motif.train.max_step", "unknown key", "max_steps"),
    ),
    (
        "stage-wrong-type",
        stage_with(key("train.max_steps", "ten")),
        ("stage.yaml", "motif.train.max_steps", "expected an integer", "'ten'"),
    ),
    (
        "stage-ratios-not-summing-to-1",
        stage_with(key("data.sources.0.weight", 0.7)),
        ("stage.yaml", "motif.data.sources", "weights must sum to 1", "1.2"),
    ),
    (
        "stage-negative-steps",
        stage_with(key("train.max_steps", -5)),
        ("stage.yaml", "motif.train.max_steps", "expected > 0", "-5"),
    ),
    ("stage-zero-lr", stage_with(key("optim.lr", 0)), ("stage.yaml", "motif.optim.lr", "expected > 0")),
    (
        "stage-unknown-engine",
        stage_with(key("parallel.engine", "horovod")),
        ("stage.yaml", "motif.parallel.engine", "expected one of", "'ddp'"),
    ),
    (
        "stage-width-growth-without-ramp",
        stage_with(_all(key("model", _DEL), key("input", "single")), growth={"output": "g", "hidden": 128}),
        ("stage.yaml", "motif.growth.ramp_steps", "ramp_steps > 0"),
    ),
    ("stage-not-yaml", stage_text("motif: [unclosed\n  name: x\n"), ("stage.yaml", "not valid YAML", "line")),
    ("stage-without-motif-section", stage_text("name: x\n"), ("stage.yaml", "motif: missing")),
    ("stage-file-missing", lambda d: ["train", "nowhere.yaml"], ("nowhere.yaml", "cannot read stage file")),
    # -- growth targets
    ("grow-shrinking", grow("--layers", "1"), ("layers", "would shrink", "source has 2")),
    ("grow-head-dim-mismatch", grow("--hidden", "72"), ("hidden", "72", "not a multiple of head_dim 16")),
    (
        "grow-kv-heads-not-dividing",
        grow("--heads", "6", "--kv-heads", "4"),
        ("heads", "6 query heads is not a multiple of 4 KV heads"),
    ),
    ("grow-llamapro-split-not-integral", grow("--layers", "5"), ("layers", "2 -> 5", "does not divide 2")),
    ("grow-nothing-to-grow", grow("--layers", "2"), ("nothing to grow", "layers 2")),
    (
        "grow-stage-split-not-integral",
        grown_stage("grow", layers=5),
        ("stage.yaml", "motif.growth.layers", "2 -> 5", "does not divide 2"),
    ),
    (
        "grow-stage-shrinking-width",
        grown_stage("grow", hidden=32, ramp_steps=2),
        ("stage.yaml", "motif.growth.hidden", "would shrink", "source has 64"),
    ),
    (
        "train-stage-head-dim-mismatch",
        grown_stage("train", hidden=72, ramp_steps=2),
        ("stage.yaml", "motif.growth.hidden", "not a multiple of head_dim 16"),
    ),
    ("grow-no-target", grow(), ("no target", "--layers")),
    ("grow-into-existing", grow("--layers", "4", dst="sharded"), ("sharded", "already exists", "--overwrite")),
    ("grow-into-itself", grow("--layers", "4", dst="single", src="single"), ("single", "already exists")),
    # -- checkpoints
    (
        "ckpt-missing-shard",
        broken(lambda ck: _shard(ck, 1).unlink(), src="sharded"),
        ("model-00002-of-", "missing shard", "model.safetensors.index.json"),
    ),
    (
        "ckpt-truncated-shard",
        broken(lambda ck: _truncate(_shard(ck, 0).name, 4)(ck), src="sharded"),
        ("model-00001-of-", "truncated"),
    ),
    (
        "ckpt-truncated-tensor-data",
        broken(_truncate("model.safetensors", 100_000)),
        ("model.safetensors", "truncated", "ends at byte"),
    ),
    (
        "ckpt-shape-mismatch-with-config",
        broken(_config(intermediate_size=160)),
        ("model.safetensors", "has shape", "config.json implies"),
    ),
    ("ckpt-wrong-dtype", broken(_int_weights), ("model.safetensors", "torch.int32", "expected a float type")),
    (
        "ckpt-index-to-missing-file",
        broken(_index_to_missing, src="sharded"),
        ("model-99999-of-99999.safetensors", "missing shard"),
    ),
    (
        "ckpt-pickle-offered-as-weights",
        broken(_pickle_only),
        ("pytorch_model.bin", "pickle checkpoints are refused", "safetensors"),
    ),
    ("ckpt-no-config", broken(lambda ck: (ck / "config.json").unlink()), ("config.json", "missing")),
    (
        "ckpt-config-not-json",
        broken(lambda ck: (ck / "config.json").write_text("{not json")),
        ("config.json", "not JSON"),
    ),
    ("ckpt-not-llama", broken(_config(model_type="mistral")), ("config.json", "model_type", "expected llama")),
    ("ckpt-not-a-directory", grow("--layers", "4", src="nowhere"), ("nowhere", "not a checkpoint directory")),
    (
        "ckpt-input-shape-differs-from-stage",
        stage_with(key("input", "single"), model={"hidden_size": 128}),
        ("stage.yaml", "motif.model.hidden_size", "128", "single has 64"),
    ),
    # -- data
    ("data-missing-files", data_source(path="data/fr.jsonl"), ("data/fr.jsonl", "no data files", ".jsonl")),
    (
        "data-empty-dataset",
        with_file("empty.jsonl", b"", data_source(path="empty.jsonl")),
        ("empty.jsonl", "no documents", "expected at least one"),
    ),
    (
        "data-undecodable-text",
        with_file("bad.txt", b"ok line\n\xff\xfe\x00 not utf-8 \xc3\x28\n", data_source(path="bad.txt")),
        ("bad.txt", "not UTF-8 text", "offset 8"),
    ),
    (
        "data-no-text-field",
        data_source(path="data/ko.jsonl", text_field="body"),
        ("source 'x'", "no field 'body'", "text_field"),
    ),
    ("data-tokenizer-missing", stage_with(key("data.tokenizer", "nowhere")), ("nowhere", "tokenizer.json")),
]


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for dirpath, _, files in os.walk(root, followlinks=True):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """`motif ARGV` in this process, from `cwd`; returns the exit status and stderr."""
    import torch

    from motif.cli import main

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()  # so the CLI's logging.basicConfig writes to the captured stderr
    # What a trainer set-up changes process-wide, restored for the tests that run after this one.
    deterministic, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    environ = dict(os.environ)
    err = io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
    finally:
        os.chdir(old)
        root.handlers[:] = saved
        root.setLevel(level)
        torch.use_deterministic_algorithms(deterministic)
        torch.set_rng_state(rng)
        os.environ.clear()
        os.environ.update(environ)
    return code, err.getvalue()


def check_error(code: int, stderr: str, command: str, fragments: tuple[str, ...]) -> str:
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith(f"motif {command}: error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert stderr.rstrip("\n").splitlines()[-1] == errors[0], f"the error is not one line:\n{stderr[-3000:]}"
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in: {errors[0]}"
    return errors[0]


def test_the_catalogue_is_large():
    assert len(CATALOGUE) + len(HELM_CATALOGUE) >= 30
    assert len({c[0] for c in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize(("setup", "fragments"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_bad_input_fails_with_one_clear_line_and_changes_nothing(case_dir, setup, fragments):
    argv = setup(case_dir)
    before = _snapshot(case_dir)
    code, stderr = run_cli(argv, case_dir)
    print(check_error(code, stderr, argv[0], fragments))
    assert _snapshot(case_dir) == before


ONE_PER_KIND = ["stage-wrong-type", "grow-head-dim-mismatch", "ckpt-missing-shard", "data-missing-files"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ONE_PER_KIND)
def test_bad_input_as_its_own_process(case_dir, zygote, case):
    _, setup, fragments = next(c for c in CATALOGUE if c[0] == case)
    argv = setup(case_dir)
    before = _snapshot(case_dir)
    child = zygote.spawn(argv, case_dir, case_dir.parent / f"{case}.log")
    code = child.wait()
    check_error(code, child.text(), argv[0], fragments)
    assert _snapshot(case_dir) == before


# ---- Helm values -----------------------------------------------------------------------------

HELM_BASE = r.load_values(r.ROOT / "jobs" / "tiny" / "stage1-depth.yaml")

HELM_CATALOGUE: list[tuple[str, dict, tuple[str, ...]]] = [
    ("helm-run-as-root", {"podSecurityContext": {"runAsNonRoot": False}}, ("/podSecurityContext/runAsNonRoot",)),
    ("helm-root-uid", {"podSecurityContext": {"runAsUser": 0}}, ("/podSecurityContext/runAsUser",)),
    ("helm-privileged", {"securityContext": {"privileged": True}}, ("/securityContext/privileged",)),
    (
        "helm-privilege-escalation",
        {"securityContext": {"allowPrivilegeEscalation": True}},
        ("/securityContext/allowPrivilegeEscalation",),
    ),
    (
        "helm-writable-root-filesystem",
        {"securityContext": {"readOnlyRootFilesystem": False}},
        ("/securityContext/readOnlyRootFilesystem",),
    ),
    (
        "helm-capability-added",
        {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]}}},
        ("/securityContext/capabilities/add",),
    ),
    (
        "helm-capabilities-not-dropped",
        {"securityContext": {"capabilities": {"drop": []}}},
        ("/securityContext/capabilities/drop",),
    ),
    (
        "helm-seccomp-unconfined",
        {"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}},
        ("/podSecurityContext/seccompProfile/type",),
    ),
    ("helm-token-as-plain-env", {"env": {"HF_TOKEN": "hf_abc"}}, ("invalid propertyName 'HF_TOKEN'",)),
    (
        "helm-token-value-instead-of-secret",
        {"secretEnv": [{"name": "HF_TOKEN", "value": "hf_abc"}]},
        ("/secretEnv/0", "value"),
    ),
    ("helm-metrics-port-out-of-range", {"motif": {"metrics": {"port": 70000}}}, ("/motif/metrics/port",)),
]


def _merge(base: dict, change: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in change.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize(("change", "fragments"), [c[1:] for c in HELM_CATALOGUE], ids=[c[0] for c in HELM_CATALOGUE])
def test_bad_helm_values_are_rejected_at_render(change, fragments):
    with pytest.raises(r.RenderError) as info:
        r.render(_merge(HELM_BASE, change), "motif-bad")
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in: {info.value}"


def test_the_helm_base_renders():
    assert r.render(copy.deepcopy(HELM_BASE), "motif-bad")


# ---- the same refusals on the sharded engines --------------------------------------------------


def _train_from(src: str, engine: str, change: Callable[[Path], None] | None = None, **overrides) -> Setup:
    """`motif train` of a stage starting from the checkpoint `src/` (changed first), on `engine`."""

    def setup(d: Path) -> list[str]:
        if change is not None:
            change(d / src)
        section = stage_section("bad", input=src, parallel={"engine": engine}, **overrides)
        return ["train", _stage(d, section), "--metrics-port", "0"]

    return setup


def _moments_of_another_shape(ck: Path) -> None:
    import torch

    from motif.train.slices import write_tensors

    write_tensors(
        ck / "optimizer.safetensors",
        {
            "exp_avg.model.norm.weight": torch.zeros(3),
            "exp_avg_sq.model.norm.weight": torch.zeros(3),
            "step.model.norm.weight": torch.zeros(()),
        },
    )


def _resume_other_engine(engine: str) -> Setup:
    """A checkpoint written by ddp, resumed by `engine`."""

    def setup(d: Path) -> list[str]:
        from motif.train.checkpoint import FORMAT

        ck = d / "ck/bad/step_00000004"
        ck.mkdir(parents=True)
        (ck / "rank_00000.json").write_text("{}")
        meta = {"format": FORMAT, "step": 4, "world_size": 1, "engine": "ddp", "stage": "bad", "parts": {}}
        (ck / "meta.json").write_text(json.dumps({**meta, "files": {"rank_00000.json": 2}}))
        section = stage_section("bad", parallel={"engine": engine})
        return ["train", _stage(d, section), "--metrics-port", "0", "--resume", "ck/bad/step_00000004"]

    return setup


SHARDED_CASES = {
    "data-missing-files": lambda e: data_source(path="data/fr.jsonl"),
    "ckpt-missing-shard": lambda e: _train_from("sharded", e, lambda ck: _shard(ck, 1).unlink(), model=None),
    "ckpt-moments-of-another-shape": lambda e: _train_from("single", e, _moments_of_another_shape, model=None),
    "resume-other-engine": _resume_other_engine,
}
SHARDED_FRAGMENTS = {
    "data-missing-files": ("data/fr.jsonl", "no data files"),
    "ckpt-missing-shard": ("model-00002-of-", "missing shard"),
    "ckpt-moments-of-another-shape": ("exp_avg.model.norm.weight", "has shape [3]", "[64]"),
    "resume-other-engine": ("written by engine ddp, this run uses",),
}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp", "deepspeed"])
@pytest.mark.parametrize("case", list(SHARDED_CASES))
def test_bad_input_on_the_sharded_engines(case_dir, zygote, engine, case):
    """Refusals that happen in the engines' own set-up (reading shards, moments, checkpoints)."""
    setup = SHARDED_CASES[case](engine)
    if case == "data-missing-files":
        base = setup

        def setup(d, base=base):
            argv = base(d)
            section = yaml.safe_load((d / argv[1]).read_text())["motif"]
            section["parallel"] = {**section["parallel"], "engine": engine}
            return ["train", _stage(d, section), "--metrics-port", "0"]

    argv = setup(case_dir)
    before = _snapshot(case_dir)
    child = zygote.spawn(argv, case_dir, case_dir.parent / f"{case}-{engine}.log")
    check_error(child.wait(timeout=180), child.text(), "train", SHARDED_FRAGMENTS[case])
    assert _snapshot(case_dir) == before
