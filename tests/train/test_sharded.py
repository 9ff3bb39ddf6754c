"""The sharded engines, fsdp (FSDP2) and deepspeed (ZeRO-3), 2 ranks on CPU: growth-aware training to the
memory contract, and checkpoints that any world size resumes.

Per engine, one pipeline (module fixture): stage 0 from scratch with a non-finite step skipped;
a resume of its step-4 checkpoint on 1 rank; an MSG width stage grown from its output, trained one
step at m = 0 with weight decay on; and a probe of what each rank reads and holds at set-up. Bit-
identical resume at the same world size is tests/hardening/test_sigkill_train.py's, per engine.
"""

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from motif.config import load_stage
from motif.data.mixture import Mixture
from motif.data.tokenizer import Tokenizer
from motif.metrics.jsonl import read
from motif.model.checkpoint import open_checkpoint, read_args
from motif.train.optimizer import new_flags_flat

from .conftest import ROOT, motif_train, stage_section, subprocess_env, write_stage

ENGINES = ["fsdp", "deepspeed"]
# Every test here reads one pipeline of real 2-rank torchrun trainings per engine (~1 min each).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=ENGINES)
def pipeline(request, corpus, tmp_path_factory):
    engine = request.param
    workdir = tmp_path_factory.mktemp(engine)
    (workdir / "data").symlink_to(corpus / "data")
    parallel = {"engine": engine, "procs_per_node": 2}
    s0 = stage_section("s0", parallel=parallel, train={"max_steps": 8, "nan_policy": "skip"})
    s0["checkpoint"] = {"dir": "ck/s0", "every_steps": 4, "keep_last": 3}
    s1 = stage_section(
        "s1",
        model=None,
        input="out/s0",
        parallel=parallel,
        growth={"output": "out/s1-grown", "hidden": 96, "intermediate": 192, "heads": 6, "ramp_steps": 4},
        optim={"weight_decay": 0.5},
    )
    files = {name: write_stage(workdir, s) for name, s in (("s0", s0), ("s1", s1))}
    runs = {"s0": motif_train(workdir, files["s0"], nproc=2, timeout=400, MOTIF_FAULT_NAN_STEP="2")}
    assert runs["s0"].returncode == 0, runs["s0"].stderr[-3000:]
    # The step-4 checkpoint of two ranks, continued by one (a job restarted on fewer nodes).
    one = stage_section("s0", parallel={**parallel, "procs_per_node": 1}, train={"max_steps": 12, "nan_policy": "skip"})
    one["checkpoint"] = {"dir": "ck/s0-on-one", "every_steps": 2, "keep_last": 9}
    one["output"] = "out/s0-on-one"
    files["one"] = write_stage(workdir, one, "s0-on-one.yaml")
    runs["one"] = motif_train(workdir, files["one"], "--resume", "ck/s0/step_00000004", nproc=1, timeout=400)
    assert runs["one"].returncode == 0, runs["one"].stderr[-3000:]
    runs["s1"] = motif_train(workdir, files["s1"], "--max-steps", "1", nproc=2, timeout=400)
    assert runs["s1"].returncode == 0, runs["s1"].stderr[-3000:]
    probe = workdir / "probe"
    probe.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += [str(ROOT / "tests/train/probe_engine.py"), str(files["s1"]), str(probe)]
    done = subprocess.run(cmd, cwd=workdir, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    runs["probe"] = [json.loads((probe / f"rank_{r}.json").read_text()) for r in (0, 1)]
    return workdir, runs


def test_a_non_finite_step_is_skipped_and_counted(pipeline):
    workdir, _ = pipeline
    records = read(workdir / "ck/s0/metrics.jsonl")
    counted = [r["motif_nonfinite_steps_total"]["skip"] for r in records if "motif_nonfinite_steps_total" in r]
    assert counted[-1] == 1
    weights = load_file(str(workdir / "out/s0/model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_the_output_loads_in_transformers_with_the_same_logits(pipeline):
    from transformers import LlamaForCausalLM

    import motif

    workdir, _ = pipeline
    ours = motif.load(workdir / "out/s0")
    hf = LlamaForCausalLM.from_pretrained(str(workdir / "out/s0"), torch_dtype=torch.float32).eval()
    tokens = torch.randint(0, ours.args.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("pipeline", ["fsdp"], indirect=True)
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # no_dist=True: one process, on purpose
def test_torch_dcp_reads_an_fsdp_checkpoint_as_its_saved_rows_say(pipeline):
    """The fsdp engine writes DCP's Hugging Face layout itself (one safetensors file per rank, each
    shard's row offset in DCP's header metadata): torch.distributed.checkpoint's own reader loads it,
    and gets every tensor as the shards put together by their recorded rows."""
    from safetensors import safe_open
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

    workdir, _ = pipeline
    ck = workdir / "ck/s0/step_00000004/fsdp"
    files = sorted(ck.glob("*.safetensors"))
    assert len(files) == 2  # one per rank
    parts: dict[str, list[tuple[list[int], torch.Tensor]]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            info = json.loads(h.metadata()["DCP_SHARDING_INFO"])
            for key in h.keys():  # noqa: SIM118 (safe_open is not a mapping)
                parts.setdefault(key, []).append((info[key]["saved_offsets"], h.get_tensor(key)))
    whole = {k: torch.cat([t for _, t in sorted(p, key=lambda p: p[0])]) for k, p in parts.items() if p[0][1].dim()}
    assert any(len(p) == 2 for p in parts.values())  # tensors split between the two ranks' files
    state = {k: torch.full_like(v, float("nan")) for k, v in whole.items()}
    load(state, storage_reader=HuggingFaceStorageReader(str(ck)), no_dist=True)
    assert [k for k in whole if not torch.equal(state[k], whole[k])] == []


def test_two_ranks_resumed_on_one_continue_every_data_shard_without_loss_or_repeat(pipeline, corpus, monkeypatch):
    workdir, runs = pipeline
    monkeypatch.chdir(workdir)  # the stage file's data paths are relative to it
    assert "saved by 2 ranks" in runs["one"].stderr
    meta = json.loads((workdir / "ck/s0-on-one/step_00000008/meta.json").read_text())
    state = json.loads((workdir / "ck/s0-on-one/step_00000008/rank_00000.json").read_text())["data"]
    assert meta["world_size"] == 1 and meta["data_shards"] == 2 and sorted(state["shards"]) == ["0", "1"]
    # 4 steps of 2 ranks x 4 sequences (one shard each), then 4 steps of 1 rank x 4 sequences (both shards,
    # in turn): each shard has given 4 * 4 + 4 * 2 sequences, and is exactly where reading that many leaves it.
    stage = load_stage(workdir / "s0-on-one.yaml")
    tok = Tokenizer(corpus / "data" / "tokenizer")
    for s in (0, 1):
        alone = Mixture.from_config(stage.data, rank=s, world=2, tokenizer=tok)
        for _ in range(4 * 4 + 4 * 2):
            alone.next_batch(1)
        assert state["shards"][str(s)] == json.loads(json.dumps(alone.state_dict()))
    tokens = meta["parts"]["train"]["tokens"]
    assert sum(tokens.values()) == (4 * 2 * 4 + 4 * 1 * 4) * 32


def test_the_loss_after_growth_equals_the_loss_before(pipeline):
    workdir, _ = pipeline
    (growth,) = [r["motif_growth_loss"] for r in read(workdir / "ck/s1/metrics.jsonl") if "motif_growth_loss" in r]
    assert growth["after"] == pytest.approx(growth["before"], rel=1e-5)


def test_masked_entries_keep_their_values_at_m0_with_weight_decay_on(pipeline):
    workdir, _ = pipeline
    grown = load_file(str(workdir / "out/s1-grown/motif-model.safetensors"))
    # One step, taken at m = 0 (--max-steps 1 ends the ramp with the run, so the output is a plain Llama).
    after = load_file(str(workdir / "out/s1/model.safetensors"))
    args = read_args(workdir / "out/s1-grown")
    assert args.growth is not None and args.growth.mask == 0.0
    new_checked = old_moved = 0
    for name, before in grown.items():
        new = new_flags_flat(name, args, tuple(before.shape), 0, before.numel())
        new = torch.full((before.numel(),), bool(new)) if isinstance(new, bool) else new
        a, b = before.reshape(-1), after[name].reshape(-1)
        assert torch.equal(a[new], b[new]), name  # hidden by the mask: no gradient, and no decay
        new_checked += int(new.sum())
        old_moved += int(not torch.equal(a[~new], b[~new]))  # the old elements trained (and decayed)
    assert new_checked > 0 and old_moved > 0


def test_moments_carried_from_motif_grow_are_the_ones_it_wrote(pipeline):
    _, runs = pipeline
    report = runs["probe"][0]
    assert report["tensors"] > 0 and report["largest_difference"] == 0.0


def test_each_rank_reads_only_its_half_of_the_start_checkpoint(pipeline):
    workdir, runs = pipeline
    ckpt = open_checkpoint(workdir / "out/s1-grown")
    total = ckpt.nbytes
    largest = max(e.nbytes for e in ckpt.entries.values())
    read_ = [r["weights_bytes_read"] for r in runs["probe"]]
    assert sum(read_) == total  # every byte read once, by one rank
    assert all(abs(b - total / 2) <= largest for b in read_), (read_, total, largest)
    moments = (workdir / "out/s1-grown/optimizer.safetensors").stat().st_size
    assert sum(r["moments_bytes_read"] for r in runs["probe"]) <= moments
    assert all(r["moments_bytes_read"] <= math.ceil(moments / 2) + 3 * largest for r in runs["probe"])
