import json
import os
import subprocess
import sys

import pytest
from transformers import GPT2LMHeadModel

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_llamacpp  # noqa: E402

SCRIPT = os.path.join(ROOT, "bench", "bench_llamacpp.py")


@pytest.mark.slow
def test_without_a_build_it_says_how_to_build(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "docs/benchmarks.md" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "convert_hf_to_gguf.py").write_text("")  # a source tree without a build
    r = subprocess.run([sys.executable, SCRIPT, f"--llama_cpp={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no llama-bench" in r.stderr and "Traceback" not in r.stderr


def test_find_tools_takes_a_complete_build(tmp_path):
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    (tmp_path / "build" / "bin").mkdir(parents=True)
    for tool in bench_llamacpp.TOOLS:
        (tmp_path / "build" / "bin" / tool).write_text("#!/bin/sh\n")
        os.chmod(tmp_path / "build" / "bin" / tool, 0o755)
    tools, problem = bench_llamacpp.find_tools(str(tmp_path))
    assert problem is None and set(tools) == set(bench_llamacpp.TOOLS)


@pytest.mark.slow  # runs export.py in a subprocess
def test_export_random_gives_what_the_converter_reads(tmp_path):
    path = bench_llamacpp.export_random(str(tmp_path), dict(n_layer=2, n_head=2, n_embd=32, block_size=64))
    config = json.load(open(os.path.join(path, "config.json")))
    assert config["n_ctx"] == 64 and config["architectures"] == ["GPT2LMHeadModel"]
    assert all(os.path.isfile(os.path.join(path, f)) for f in ("vocab.json", "merges.txt", "tokenizer_config.json"))
    assert GPT2LMHeadModel.from_pretrained(path).config.n_layer == 2


def test_linear_ms_times_every_linear_layer_of_each_format():
    import torch
    from model import GPT, GPTConfig
    from nanophi.weights import apply_weights
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)).eval()
    with torch.no_grad():
        plain = bench_llamacpp.linear_ms(model, 1)
        int8 = bench_llamacpp.linear_ms(apply_weights(model, "int8"), 1)
    assert 0 < plain < 1e4 and 0 < int8 < 1e4


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self")
def test_runtime_mb_is_the_memory_of_serve_py_without_weights():
    mb = bench_llamacpp.runtime_mb()
    assert mb is not None and 50 < mb < 1000, mb  # torch alone is ~200 MB here
