"""`motif demo`, shortened (--max-steps): corpus, tokenizer, the three tiny stages through the real
`motif train` command, the table, the plot, the continuations per checkpoint, the transformers
check, the evaluation table (with a generative task) and the validated data-mix sweep."""

import json
import subprocess

import pytest

from .conftest import PYTHON, subprocess_env


@pytest.mark.slow
def test_demo_runs_the_three_stages_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run(
        [PYTHON, "-m", "motif", "demo", "--out", str(out), "--max-steps", "4", "--nproc", "1", "--metrics-port", "0"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    for name in ("tiny-s0-base", "tiny-s1-depth", "tiny-s2-width"):
        assert any(line.startswith(name) for line in r.stdout.splitlines()), name  # a table row per stage
    assert "metrics at http://" in r.stdout
    assert "growth check: loss before growth" in r.stdout
    assert "max |logits difference| vs motif = " in r.stdout
    diff = float(r.stdout.split("max |logits difference| vs motif = ")[1].split()[0])
    assert diff < 1e-4
    png = out / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    final = json.loads((out / "checkpoints/tiny-s2-width/final/config.json").read_text())
    assert final["model_type"] == "llama" and final["num_hidden_layers"] == 6 and final["hidden_size"] == 192
    assert (out / "checkpoints/tiny-s2-width/final/optimizer.safetensors").exists()
    # The evaluation table (held-out bits per byte, the tiny KMMLU/KoBEST/MMLU-format tasks) and the mix sweep.
    assert "held-out ko bits/byte" in r.stdout and "demo_kobest_copa" in r.stdout
    assert "demo_kmmlu_direct exact_match" in r.stdout  # the generative task, KMMLU direct's format
    # One Korean and one English continuation per checkpoint; the LlamaPro growth output writes its source's.
    assert r.stdout.count("ko: 고양이는 -> ") == r.stdout.count("en: The cat -> ") == 5
    assert "tiny-s1-depth grown" in r.stdout and "growth preserved it" in r.stdout
    assert "chosen Korean share" in r.stdout and "leave-one-out rmse" in r.stdout
    assert r.stdout.count("leave-one-out error ko ") == 5  # five proxies, each predicted from the other four
    fit = json.loads((out / "mix" / "fit.json").read_text())
    assert fit["bootstrap"]["mixtures"] == 5 and fit["chosen"]["ko_share_interval"] is not None
    assert (out / "mix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
