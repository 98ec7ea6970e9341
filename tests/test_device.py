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


def test_cpu_compile_only_when_the_run_repays_it():
    import shutil
    import sys
    from nanophi.device import CPU_COMPILE_MIN_ITERS, compile_by_default
    linux = sys.platform.startswith("linux")
    assert compile_by_default("cpu", CPU_COMPILE_MIN_ITERS - 1) is False  # short runs: no warm-up to repay
    assert compile_by_default("cpu", CPU_COMPILE_MIN_ITERS) == bool(linux and (shutil.which("g++") or shutil.which("clang++")))
    assert compile_by_default("cuda", 1) == linux
    assert compile_by_default("mps", 10 ** 6) is False


def test_measured_limits_are_plausible():
    from nanophi.device import measure_copy_bandwidth, measure_matmul_flops
    flops = measure_matmul_flops("float32", n=256, repeats=2)
    assert 1e8 < flops < 1e14  # a 256^3 matmul: well above 0.1 GFLOP/s, below any CPU's peak
    bandwidth = measure_copy_bandwidth(nbytes=8 << 20, repeats=2)
    assert 1e8 < bandwidth < 1e13
