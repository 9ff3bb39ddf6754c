"""`motif mix`: values that used to pass or end in a traceback are one line, exit 2, nothing written;
a diverged proxy is named as diverged; a sweep directory is never reused across start checkpoints."""

from __future__ import annotations

import json
import math

import pytest

from ..mix.conftest import make_sweep, snapshot, tiny_stage, write_doc

KO = (0.8, 1.2, -3.0)
EN = (0.9, 0.15, 2.5)


def refused(motif_cli, root, *argv: str, message: str) -> None:
    before = snapshot(root)
    code, out, err = motif_cli(*argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert snapshot(root) == before


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_weights_that_are_not_finite_are_refused(tmp_path, motif_cli, value):
    make_sweep(tmp_path / "s", {"ko": KO, "en": EN})
    args = ("mix", "fit", str(tmp_path / "s"), "--rule", "weighted", "--weights", f"ko={value},en=0.5")
    refused(motif_cli, tmp_path, *args, message=f"--weights: 'ko={value}': expected LANGUAGE=WEIGHT with WEIGHT >= 0")


def test_a_diverged_proxy_is_named_as_diverged_not_unfinished(tmp_path, motif_cli):
    sweep = tmp_path / "s"
    make_sweep(sweep, {"ko": KO, "en": EN})
    metrics = sweep / "t-s1-mix-ko50" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    last = json.loads(lines[-1])
    last["motif_heldout_bits_per_byte"]["ko"] = math.nan
    metrics.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    code, out, err = motif_cli("mix", "fit", str(sweep), "--baseline", "en=1.55")
    assert code == 2
    assert "proxy t-s1-mix-ko50 diverged: held-out bits per byte not finite (ko) at step 40" in err
    assert "did not finish" not in err


def test_a_sweep_from_another_start_checkpoint_does_not_reuse_the_old_proxies(tmp_path, motif_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_doc(tmp_path / "stage.yaml", tiny_stage())
    args = ("mix", "sweep", "stage.yaml", "--ko", "0.1,0.3,0.5,0.7,0.9", "--steps", "10", "--dry-run", "--out", "m")
    assert motif_cli(*args, "--start", "ck/small-a")[0] == 0
    refused(motif_cli, tmp_path, *args, "--start", "ck/small-b", message="trained from another start checkpoint")
    assert motif_cli(*args, "--start", "ck/small-a")[0] == 0  # the same sweep again: resumed, as before


def test_two_shares_that_round_to_one_proxy_name_are_refused(tmp_path, motif_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_doc(tmp_path / "stage.yaml", tiny_stage())
    refused(
        motif_cli,
        tmp_path,
        *("mix", "sweep", "stage.yaml", "--ko", "0.1,0.3,0.300001,0.5", "--dry-run", "--out", "m"),
        message="--ko: shares 0.3 and 0.300001 both name proxy t-mix-mix-ko30",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"format": "motif-mix-sweep/1", "proxies": [1]}', "proxies: expected a list of objects"),
        ('{"format": "motif-mix-sweep/1", "proxies": {}}', "proxies: expected a list of objects"),
        ("{not json", "not a readable sweep manifest"),
        (b"\xff\xfe", "not a readable sweep manifest"),
    ],
)
def test_a_malformed_sweep_manifest_is_one_line(tmp_path, motif_cli, text, message):
    sweep = tmp_path / "s"
    make_sweep(sweep, {"ko": KO, "en": EN})
    manifest = sweep / "sweep.json"
    manifest.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(motif_cli, tmp_path, "mix", "fit", str(sweep), "--baseline", "en=1.55", message=message)


def test_a_trial_with_two_shares_or_a_file_for_its_dir_is_one_line(tmp_path, motif_cli):
    stage = write_doc(tmp_path / "stage.yaml", tiny_stage())
    (tmp_path / "afile").write_text("not a directory\n")
    trial = ("mix", "trial", str(stage), "--steps", "5")
    refused(motif_cli, tmp_path, *trial, "--ko", "0.3,0.5", "--dir", str(tmp_path / "d"), message="give one share")
    refused(motif_cli, tmp_path, *trial, "--ko", "0.3", "--dir", str(tmp_path / "afile"), message="is not a directory")
