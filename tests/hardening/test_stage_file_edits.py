"""`motif mix fit --write STAGE_FILE` edits the real file, keeps every byte but the weights, and
refuses what it cannot edit safely, in one line, before it fits (nothing written, the sweep's
fit.json included):

- a symbolic link: the file it names is edited, the link stays a link (it used to be replaced by a
  copy, the target unchanged while a diff was printed); a hard link: every name sees the edit;
- CRLF line endings stay CRLF;
- a weight that is a YAML alias of an anchor outside the sources: refused (it was a traceback);
- a stage file on a read-only file system: refused before the fit (it was a traceback after it);
- another process's edit between the read and the rename: detected, refused, and that edit kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..mix.conftest import make_sweep, motif_cli  # noqa: F401  (fixture reused)
from .test_bad_inputs import _snapshot, check_error
from .test_preflight_volumes import mounted_tmpfs

KO = (0.8, 1.2, -3.0)
EN = (0.9, 0.15, 2.5)
STAGE = """\
# a stage file
motif:
  name: s-edit
  model: {vocab_size: 384, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
          num_attention_heads: 4, num_key_value_heads: 2}
  output: out/s
  data:
    tokenizer: data/tokenizer
    seq_len: 32
    sources:
      - {name: ko, language: ko, weight: 0.5, path: data/ko.jsonl}
      - {name: en, language: en, weight: 0.5, path: data/en.jsonl}   # English
  optim: {lr: 3.0e-3}
  train: {max_steps: 8, micro_batch_size: 4, precision: fp32}
  checkpoint: {dir: ck/s}
"""


@pytest.fixture
def sweep(tmp_path) -> Path:
    directory = tmp_path / "sweep"
    make_sweep(directory, {"ko": KO, "en": EN}, noise=0.002, seed=1)
    return directory


def _fit(motif_cli, sweep: Path, stage: Path | str):  # noqa: F811
    return motif_cli("mix", "fit", str(sweep), "--baseline", "ko=2.0,en=1.55", "--write", str(stage), "--json")


def _weights(path: Path) -> dict[str, float]:
    return {s["name"]: s["weight"] for s in yaml.safe_load(path.read_text())["motif"]["data"]["sources"]}


def _only_weights_changed(old: bytes, new: bytes) -> None:
    """Every byte but the two weight values is the same."""
    a, b = old.split(b"weight: 0.5"), new.split(b"weight: ")
    assert len(a) == len(b) == 3, new
    assert a[0] == b[0]
    for before, after in zip(a[1:], b[1:], strict=True):
        assert after.endswith(before) and after[: -len(before)].replace(b".", b"").isdigit(), (before, after)


def test_a_symlink_is_followed_and_a_hard_link_edited_in_place(tmp_path, sweep, motif_cli):  # noqa: F811
    (tmp_path / "real").mkdir()
    real = tmp_path / "real/stage.yaml"
    real.write_text(STAGE)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    code, _, err = _fit(motif_cli, sweep, link)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert _weights(real)["ko"] != 0.5
    _only_weights_changed(STAGE.encode(), real.read_bytes())
    assert not list(tmp_path.rglob(".*.lease")) and not list(tmp_path.rglob(".*.tmp-*"))

    other = tmp_path / "hard.yaml"
    real.write_text(STAGE)
    os.link(real, other)
    code, _, err = _fit(motif_cli, sweep, other)
    assert code == 0, err
    assert os.stat(real).st_ino == os.stat(other).st_ino and real.read_bytes() == other.read_bytes()
    _only_weights_changed(STAGE.encode(), real.read_bytes())


def test_crlf_line_endings_and_every_other_byte_stay(tmp_path, sweep, motif_cli):  # noqa: F811
    stage = tmp_path / "crlf.yaml"
    old = STAGE.replace("\n", "\r\n").encode()
    stage.write_bytes(old)
    code, _, err = _fit(motif_cli, sweep, stage)
    assert code == 0, err
    new = stage.read_bytes()
    assert new.count(b"\r\n") == old.count(b"\r\n") and b"\n" not in new.replace(b"\r\n", b"")
    _only_weights_changed(old, new)


ALIAS = STAGE.replace("# a stage file\n", "shared: &half 0.5   # an anchor outside the sources\n").replace(
    "{name: ko, language: ko, weight: 0.5,", "{name: ko, language: ko, weight: *half,"
)


@pytest.mark.parametrize("case", ["alias-outside", "read-only"])
def test_what_cannot_be_edited_is_refused_in_one_line_before_the_fit(tmp_path, sweep, motif_cli, case, capsys):  # noqa: F811
    directory = tmp_path / "stages"
    with mounted_tmpfs(directory, "size=1m") as mounted:
        stage = directory / "stage.yaml"
        stage.write_text(ALIAS if case == "alias-outside" else STAGE)
        if case == "read-only":
            assert mounted, "this test needs to mount a tmpfs (it runs as root)"
            subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
        before = {**_snapshot(tmp_path)}
        code, out, err = _fit(motif_cli, sweep, stage)
        fragments = {
            "alias-outside": ("motif.data.sources[0].weight: a YAML alias of an anchor outside", "line 1"),
            "read-only": ("on a read-only file system; not written",),
        }[case]
        check_error(code, err, "mix", (str(stage), *fragments))
        assert _snapshot(tmp_path) == before and not (sweep / "fit.json").exists()


_EDIT = {"armed": None}


def _edit_while_writing(event: str, args: tuple) -> None:
    """Another writer's edit, made at the moment the fit opens its temporary file (after its read)."""
    target = _EDIT["armed"]
    if target is not None and event == "open" and Path(str(args[0])).name.startswith(f".{Path(target).name}.tmp-"):
        _EDIT["armed"] = None
        Path(target).write_text(STAGE.replace("# a stage file", "# edited by hand meanwhile"))


sys.addaudithook(_edit_while_writing)


def test_an_edit_made_between_the_read_and_the_rename_is_detected_and_kept(tmp_path, sweep, motif_cli):  # noqa: F811
    stage = tmp_path / "stage.yaml"
    stage.write_text(STAGE)
    _EDIT["armed"] = str(stage)
    try:
        code, _, err = _fit(motif_cli, sweep, stage)
    finally:
        _EDIT["armed"] = None
    check_error(code, err, "mix", (str(stage), "changed by another process while the weights were set; not written"))
    assert stage.read_text() == STAGE.replace("# a stage file", "# edited by hand meanwhile")
    assert not list(tmp_path.glob(".*.tmp-*")) and not list(tmp_path.glob(".*.lease"))
