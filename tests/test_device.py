"""How a training process tells whether it shares its GPU (IMGCLF_GPU_SHARED, else NVML), and that an NVML
failure is said once, not swallowed."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def nvml(monkeypatch):
    """A CUDA device torch says is there, and NVML's initialisation failing as it does where the driver's library
    is missing (pynvml's own error); counts the attempts. The warning flag starts afresh."""
    import pynvml
    import torch

    from imgclf.training import device

    calls = {"init": 0}

    def init():
        calls["init"] += 1
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(pynvml, "nvmlInit", init)
    monkeypatch.setattr(device, "_nvml_warned", False)
    monkeypatch.delenv("IMGCLF_GPU_SHARED", raising=False)
    return calls


def test_an_nvml_failure_is_logged_once_per_process(nvml, caplog):
    from imgclf.training.device import gpu_shared

    with caplog.at_level(logging.WARNING, logger="imgclf.training.device"):
        assert gpu_shared() is False
        assert gpu_shared() is False
    assert nvml["init"] == 2  # asked each time: the answer may change
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "NVML Shared Library Not Found" in warnings[0] and "IMGCLF_GPU_SHARED=1" in warnings[0]


@pytest.mark.parametrize("flag,shared", [("1", True), ("0", False)])
def test_the_runners_flag_is_read_before_nvml(nvml, monkeypatch, caplog, flag, shared):
    from imgclf.training.device import gpu_shared

    monkeypatch.setenv("IMGCLF_GPU_SHARED", flag)
    with caplog.at_level(logging.WARNING, logger="imgclf.training.device"):
        assert gpu_shared() is shared
    assert nvml["init"] == 0 and not caplog.records  # the flag decides: NVML is not asked


def test_without_cuda_nothing_is_shared_and_nothing_is_said(nvml, monkeypatch, caplog):
    import torch

    from imgclf.training.device import gpu_shared

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="imgclf.training.device"):
        assert gpu_shared() is False
    assert nvml["init"] == 0 and not caplog.records
