import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow  # a subprocess that trains (tiny): tens of seconds on a loaded 2-core machine
def test_bench_gpu_tiny_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_gpu.py"), "--tiny", f"--out={out}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(out.read_text())
    assert {"device", "parity", "matmul_peak_flops", "train", "memory", "decode", "notes"} <= set(got)
    assert got["parity"]["float32"]["max_abs_logit_diff"] < 1e-4
    assert {(t["impl"], t["dtype"], t["compiled"]) for t in got["train"]} == {
        ("ours", "float32", False), ("transformers", "float32", False)}
    assert all(t["tok_per_s"] > 0 and 0 < t["mfu_vs_measured_peak"] for t in got["train"])
    assert [(m["block"], m["gradient_checkpointing"]) for m in got["memory"]] == [
        (64, False), (64, True), (256, False), (256, True)]
    # checkpointing keeps one block's activations, not all of them
    assert got["memory"][1]["estimate_bytes"] < got["memory"][0]["estimate_bytes"]
    assert got["decode"]["batch_1_tok_per_s"] > 0 and got["decode"]["batch_8_tok_per_s"] > 0
    assert any("need CUDA" in n or "needs CUDA" in n for n in got["notes"])  # skipped parts say so
    assert "note: " in r.stdout and "wrote" in r.stdout
