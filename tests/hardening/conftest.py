"""Fixtures of the hardening tests: the trainer tests' tiny corpus and stage files, and a zygote
that forks `motif` commands as real processes without a fresh interpreter start each time."""

from __future__ import annotations

import pytest

from ..mix.conftest import motif_cli  # noqa: F401  (the same: `motif ...` in this process)
from ..train.conftest import corpus, workdir  # noqa: F401  (fixtures reused, not copied)
from .zygote import Zygote


@pytest.fixture(scope="session")
def zygote():
    with Zygote() as z:
        yield z
