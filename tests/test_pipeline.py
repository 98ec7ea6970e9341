"""The main job end to end, tiny: a small offline corpus, 1 iteration of pretraining the stand-in base,
its transformers export, 1 of finetuning from that directory, eval.py base against finetuned,
the showcase families base vs finetuned, one sample per tag, the next commands. The real run's figures are in docs/pipeline.md."""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_pipeline_pretrain_export_finetune_compare(tmp_path):
    data, out, base = tmp_path / "data", tmp_path / "out", tmp_path / "base"
    r = subprocess.run([sys.executable, "data/prepare_all.py", f"--out_dir={data}", "--max_docs=20", "--num_generated=100",
                        "--progress=False"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = subprocess.run([sys.executable, "pipeline.py", "--prepare=False", f"--data_dir={data}", f"--out_dir={out}",
                        f"--base_dir={base}", "--max_iters=1", "--eval_limit=1", "--sample_tokens=2", "--showcase_n=3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    steps = [line for line in r.stdout.splitlines() if line.startswith("=== ")]
    assert [s.split(":")[0] for s in steps] == [
        "=== pretrain the base (a stand-in for GPT-2) on textbook, code, math, logic and noun chains", "=== export the base to a transformers directory",
        "=== finetune from that directory on the task mixture", "=== finish on the noun chains, token embeddings frozen",
        "=== evaluate", "=== showcase", "=== pipeline done"]
    assert f"--init_from={base}/hf" in steps[2] and f"init from {base}/hf" in r.stdout   # the gpt2-medium path
    assert f"--init_from={out}-mix/ckpt.pt" in steps[3] and f"--out_dir={out}" in steps[3]  # the finish
    assert json.load(open(base / "hf" / "config.json"))["model_type"] == "gpt2"
    report = json.load(open(out / "eval.json"))
    assert [(m["role"], m["init_from"]) for m in report["models"]] == [("base", f"{base}/hf"), ("model", "resume")]
    table = open(out / "eval.md").read()
    for row in ("| loss/math |", "| em/math |", "| eot/em/math |", "| eot/em/logic |"):
        assert row in table
    for family in ("doubling", "running", "chain"):  # base vs finetuned on every showcase family
        assert re.search(rf"^{family} \(\[\w+\], 3 held-out prompts\): base \d/3 \(.*\), finetuned \d/3 \(.*\); chance ", r.stdout, re.M)
    assert r.stdout.count("want ") == 3 * 3 and re.search("finetuned [✓✗]", r.stdout)
    for tag in ("Textbook", "Code", "Math", "Logic", "Excerpt", "Chat", "Roleplay"):
        assert f"--- [{tag}]" in r.stdout
    assert f"python serve.py --out_dir={out}" in r.stdout and f"--compare_with={base}/hf" in r.stdout
    # a second run into the same folders is refused, and says how to replace them (pipeline.py's own --overwrite)
    again = subprocess.run([sys.executable, "pipeline.py", "--prepare=False", f"--data_dir={data}", f"--out_dir={out}",
                            f"--base_dir={base}", "--max_iters=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already holds a trained run" in again.stderr and "--overwrite=True" in again.stderr
    assert "pipeline: step 'pretrain the base" in again.stderr
