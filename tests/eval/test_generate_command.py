"""`motif generate`: greedy continuations survive growth exactly; sampling is seeded; bad input is one line.

A tiny checkpoint is grown by LlamaPro (two new identity blocks), then by MSG in width with the
masks at 0: each growth step preserves the function, so each writes the same greedy continuation,
token for token, as the checkpoint it grew from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from motif.cli import main

PROMPTS = ("오늘 고양이는 빨간 사과를", "The cat sees")


@pytest.fixture(scope="module")
def lineage(plain_ckpt, workdir) -> dict[str, Path]:
    """plain -> LlamaPro (4 layers) -> MSG width at m = 0."""
    from motif.growth import GrowthTargets, grow_checkpoint

    out = {"plain": plain_ckpt, "llamapro": workdir / "gen" / "llamapro", "msg": workdir / "gen" / "msg"}
    grow_checkpoint(plain_ckpt, out["llamapro"], GrowthTargets(layers=4), depth_method="llamapro", progress=False)
    grow_checkpoint(out["llamapro"], out["msg"], GrowthTargets(hidden=96, intermediate=192, heads=6), progress=False)
    return out


def generate(capsys, ckpt: Path, tokenizer: Path, prompt: str, *extra: str) -> dict:
    argv = ["generate", str(ckpt), "--prompt", prompt, "--tokenizer", str(tokenizer), "--device", "cpu"]
    assert main([*argv, "--max-new-tokens", "24", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_greedy_continuations_are_identical_across_llamapro_and_msg_at_m0(lineage, tokenizer_dir, capsys):
    from motif.model.checkpoint import read_args

    assert read_args(lineage["msg"]).growth.mask == 0.0, "the MSG checkpoint is mid-growth (masks at 0)"
    for prompt in PROMPTS:
        out = {name: generate(capsys, ckpt, tokenizer_dir, prompt) for name, ckpt in lineage.items()}
        plain = out["plain"]
        assert len(plain["tokens"]) == plain["new_tokens"] > 0
        assert plain["text"], "a continuation was written"
        for name in ("llamapro", "msg"):
            assert out[name]["tokens"] == plain["tokens"], f"{name} changed the greedy continuation of {prompt!r}"
            assert out[name]["text"] == plain["text"]
        assert out["msg"]["growth_mask"] == 0.0


def test_sampling_is_reproducible_for_a_seed(plain_ckpt, tokenizer_dir, capsys):
    a = generate(capsys, plain_ckpt, tokenizer_dir, PROMPTS[1], "--temperature", "1.5", "--seed", "4")
    b = generate(capsys, plain_ckpt, tokenizer_dir, PROMPTS[1], "--temperature", "1.5", "--seed", "4")
    c = generate(capsys, plain_ckpt, tokenizer_dir, PROMPTS[1], "--temperature", "1.5", "--seed", "5")
    greedy = generate(capsys, plain_ckpt, tokenizer_dir, PROMPTS[1])
    assert a["tokens"] == b["tokens"]
    assert c["tokens"] != a["tokens"] and a["tokens"] != greedy["tokens"]
    assert a["temperature"] == 1.5 and a["seed"] == 4


def test_the_text_is_streamed_after_the_prompt(plain_ckpt, tokenizer_dir, capsys):
    record = generate(capsys, plain_ckpt, tokenizer_dir, PROMPTS[0])
    argv = ["generate", str(plain_ckpt), "--prompt", PROMPTS[0], "--tokenizer", str(tokenizer_dir)]
    assert main([*argv, "--device", "cpu", "--max-new-tokens", "24"]) == 0
    captured = capsys.readouterr()
    assert captured.out == PROMPTS[0] + record["text"] + "\n"
    assert "tokens/s" in captured.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens: expected > 0, got 0"),
        (["--temperature", "-1"], "--temperature: expected >= 0, got -1.0"),
        (["--temperature", "nan"], "--temperature: expected >= 0, got nan"),
    ],
)
def test_bad_flags_are_one_line(plain_ckpt, tokenizer_dir, capsys, extra, message):
    argv = ["generate", str(plain_ckpt), "--prompt", "x", "--tokenizer", str(tokenizer_dir), *extra]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"motif generate: error: {message}"


def test_a_checkpoint_without_a_tokenizer_is_refused_before_loading(plain_ckpt, capsys):
    assert main(["generate", str(plain_ckpt), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert f"{plain_ckpt / 'tokenizer.json'}: missing; pass --tokenizer DIR" in err and "Traceback" not in err


def test_help_does_not_import_torch():
    code = (
        "import argparse, sys\n"
        "from motif.eval import generate\n"
        "p = argparse.ArgumentParser(); generate.add_arguments(p); p.format_help()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
