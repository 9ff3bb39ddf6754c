"""bench/gpu.py's simulation beside its measurement, built on CPU from a measurement dict."""

import pytest

from bench import gpu

TINY = {**gpu.SMALL, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "vocab_size": 512}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("AMD Instinct MI300X", "mi300x"),
        ("Tesla T4", None),
    ],
)
def test_the_device_kind_comes_from_the_gpus_name(name, kind):
    assert gpu.device_kind(name) == kind


def test_the_simulation_is_printed_beside_the_measurement(tmp_path):
    section = gpu._section("mfu-tiny", TINY, "fsdp", 128, 2, 4, compile=True)
    measured = {"step_s": 0.5, "peak_memory_bytes": 2**30}
    sim = gpu.simulated_beside(tmp_path, section, measured, "h100")
    assert sim["device_kind"] == "h100" and 0 < sim["step_s"] < 0.5 and 0 < sim["mfu"] < 1
    assert sim["step_error"] == pytest.approx(sim["step_s"] / 0.5 - 1)
    assert sim["memory_error"] == pytest.approx(sim["total_bytes"] / 2**30 - 1)
    line = gpu.format_beside(sim)
    assert "h100" in line and "beside measured 1.0 GiB" in line and "beside measured 0.500 s" in line
    unmeasured = gpu.format_beside({**sim, "measured_peak_memory_bytes": None, "memory_error": None})
    assert "not measured" in unmeasured


def test_without_a_gpu_nothing_is_measured(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 0
    assert "no CUDA GPU here; nothing measured" in capsys.readouterr().out
