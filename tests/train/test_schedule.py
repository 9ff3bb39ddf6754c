"""Learning-rate schedule and MSG mask ramp: pure functions of the step."""

import math

import pytest

from motif.config import OptimConfig
from motif.train.schedule import Schedule, mask_value


def test_warmup_then_cosine_to_min_lr():
    s = Schedule(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=20)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == pytest.approx(1.0)
    assert s(12) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert s(20) == pytest.approx(0.1)
    assert s(100) == pytest.approx(0.1)  # past the end: min_lr, never negative
    lrs = [s(i) for i in range(4, 21)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_rewarm_at_a_growth_event_replaces_the_warmup():
    optim = OptimConfig(lr=2.0, min_lr=0.0, warmup_steps=2, rewarm_steps=10)
    grown = Schedule.from_config(optim, max_steps=100, grows=True)
    plain = Schedule.from_config(optim, max_steps=100, grows=False)
    assert grown.warmup_steps == 10 and plain.warmup_steps == 2
    assert grown(0) == pytest.approx(0.2) and plain(0) == pytest.approx(1.0)
    assert grown(9) == pytest.approx(2.0)


def test_mask_ramps_linearly_to_one_and_stays():
    assert [mask_value(s, 4) for s in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert mask_value(0, 0) == 1.0
