"""--device / --dtype: what auto picks, and one-line errors for devices this torch lacks."""

from __future__ import annotations

import pytest
import torch

from ditaccel.cli import main
from ditaccel.device import resolve_args, resolve_device, resolve_dtype
from ditaccel.errors import DitaccelError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("ditaccel.device._mps_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_auto_on_cpu_is_cpu_fp32(no_gpu):
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert resolve_dtype("auto", "auto") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16 and resolve_dtype(torch.float16) == torch.float16


@pytest.mark.parametrize("bf16, want", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_prefers_cuda_then_bf16(fake_cuda, monkeypatch, bf16, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype("auto", "auto") == want
    assert resolve_dtype("auto", "cpu") == torch.float32  # an explicit CPU stays fp32
    with pytest.raises(DitaccelError, match="1 CUDA GPU"):
        resolve_device("cuda:3")


def test_auto_falls_back_to_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("ditaccel.device._mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


@pytest.mark.parametrize("device, dtype, match", [
    ("cuda", "auto", "is not available"),
    ("mps", "auto", "is not available"),
    ("gpu", "auto", "unknown device"),
    ("cpu", "int3", "unknown dtype"),
])
def test_bad_device_or_dtype_is_one_cli_line(no_gpu, tmp_path, capsys, device, dtype, match):
    rc = main(["generate", "--prompt", "a dog", "--device", device, "--dtype", dtype, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and match in err[0] and err[0].startswith("ditaccel: error:")
    assert not (tmp_path / "o").exists()


def test_resolve_args_gives_commands_concrete_values(no_gpu):
    class A:
        device, dtype = "auto", "auto"

    a = A()
    resolve_args(a)
    assert a.device == "cpu" and a.dtype == torch.float32


def test_load_pipeline_takes_device_and_dtype(no_gpu):
    from ditaccel.pipeline import load_pipeline

    pipe = load_pipeline(device="auto", dtype="bfloat16")
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.device == torch.device("cpu")
    assert load_pipeline().transformer.dtype == torch.float32
    with pytest.raises(DitaccelError, match="is not available"):
        load_pipeline(device="cuda")
