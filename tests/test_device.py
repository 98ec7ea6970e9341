import pytest
import torch

from nanophi.device import autocast, peak_flops, peak_flops_by_name, pick_device, pick_dtype


def test_peak_table_uses_the_real_gpu():
    assert peak_flops_by_name("Tesla T4") == 65e12  # NanoPhi's GPU: not the A100's 312
    assert peak_flops_by_name("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops_by_name("NVIDIA A10G") == 70e12 and peak_flops_by_name("NVIDIA A10") == 125e12
    assert peak_flops_by_name("NVIDIA L4") == 121e12 and peak_flops_by_name("NVIDIA L40S") == 362e12
    assert peak_flops_by_name("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_by_name("Some Future GPU") is None
    assert peak_flops("cpu") is None


def test_dtype_selection_on_cpu():
    assert pick_device("auto") in ("cpu", "cuda", "mps")
    assert pick_dtype("auto", "cpu") == "float32"
    assert pick_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="float16"):
        pick_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="dtype must be"):
        pick_dtype("fp8", "cpu")
    with autocast("cpu", "bfloat16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("cpu", "float32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_auto_dtype_by_capability():
    from nanophi.device import auto_dtype
    assert auto_dtype("cuda", (7, 5)) == "float16"   # T4: fp16 + GradScaler, no emulated bf16
    assert auto_dtype("cuda", (7, 0)) == "float16"   # V100
    assert auto_dtype("cuda", (8, 0)) == "bfloat16"  # A100
    assert auto_dtype("cuda", (9, 0)) == "bfloat16"  # H100
    assert auto_dtype("cpu") == "float32"
