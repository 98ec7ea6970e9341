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


def test_cpu_dtype_probe_measures_once_per_machine(tmp_path, monkeypatch, capsys):
    import json
    from nanophi import device
    first, entry = device.probe_cpu_dtype(cache_dir=str(tmp_path), n=256, repeats=1)
    assert first in ("float32", "bfloat16") and entry["cached"] is False
    assert entry["fp32_gflops"] > 0 and entry["bf16_gflops"] > 0
    # the rule, from the figures it printed: bf16 only with a clear lead
    assert (first == "bfloat16") == (entry["bf16_gflops"] >= device.BF16_MIN_SPEEDUP * entry["fp32_gflops"])
    saved = json.load(open(tmp_path / device.PROBE_FILE))
    assert list(saved) == [entry["key"]] and saved[entry["key"]]["dtype"] == first
    # another machine's entry (here: this key says bf16) is what auto then picks, without measuring
    saved[entry["key"]]["dtype"] = "bfloat16"
    saved["Other CPU | 64 threads | torch 0"] = {"dtype": "float32", "fp32_gflops": 1.0, "bf16_gflops": 0.5}
    (tmp_path / device.PROBE_FILE).write_text(json.dumps(saved))
    monkeypatch.setattr("nanophi.tokenizer.CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(device, "measure_matmul_flops", lambda *a, **k: pytest.fail("measured although cached"))
    assert device.pick_dtype("auto", "cpu", training=True) == "bfloat16"
    assert "dtype auto on this CPU: bfloat16 (matmul fp32" in capsys.readouterr().out
    assert device.pick_dtype("auto", "cpu") == "float32"  # sampling, serving, eval: not probed
    assert device.pick_dtype("float32", "cpu", training=True) == "float32"  # an explicit choice wins


def test_cpu_dtype_probe_survives_a_broken_cache(tmp_path):
    from nanophi import device
    (tmp_path / device.PROBE_FILE).write_text("{not json")
    chosen, entry = device.probe_cpu_dtype(cache_dir=str(tmp_path), n=256, repeats=1)
    assert entry["cached"] is False and chosen in ("float32", "bfloat16")
    assert device.probe_cpu_dtype(cache_dir=str(tmp_path), n=256, repeats=1)[1]["cached"] is True
