"""load_model(device=...) on a machine without that device: one ConfigError line, before any file is read."""

from __future__ import annotations

import pytest
import torch

from gendr_core.checkpoint import check_device, load_model
from gendr_core.errors import ConfigError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


def test_load_model_on_cuda_without_cuda_is_one_clear_line(no_cuda, tmp_path):
    missing = tmp_path / "not-there.safetensors"  # the device is checked first: no FileNotFoundError
    with pytest.raises(ConfigError) as info:
        load_model(missing, device="cuda")
    assert str(info.value) == (f"device='cuda': no CUDA device is available (torch {torch.__version__} is a "
                               "CPU-only build); use 'cpu', or install a CUDA build of PyTorch")
    assert info.value.__cause__ is None and info.value.__suppress_context__ is False


def test_cuda_build_without_a_visible_gpu_and_cli_spelling(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(ConfigError, match=r"^--device cuda:1: no CUDA device is available \(torch .* is built for "
                                          r"CUDA 12\.8, but no GPU is visible\); use --device cpu,"):
        check_device("cuda:1", "--device")


def test_cuda_index_past_the_last_gpu_and_unknown_device_strings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError) as info:
        check_device("cuda:2")
    assert str(info.value) == "device='cuda:2': this machine has 2 CUDA device(s) (cuda:0..cuda:1)"
    assert check_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError) as info:
        check_device("gpu")
    assert str(info.value) == "device='gpu' is not a device; use 'cpu', 'cuda' or 'cuda:N'"
    assert check_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError) as info:
        check_device("gpu", "--device")
    assert str(info.value) == "--device gpu is not a device; use --device cpu, --device cuda or --device cuda:N"
