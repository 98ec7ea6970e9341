import subprocess
import sys

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from nanophi.checkpoint import load_model
from conftest import ROOT
from nanophi.tokenizer import get_tokenizer


def test_export_cli_round_trip(tiny_out_dir, tmp_path):
    dest = str(tmp_path / "hf")
    r = subprocess.run([sys.executable, "export.py", f"--out_dir={tiny_out_dir}", f"--export_dir={dest}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ours, _ = load_model("resume", out_dir=tiny_out_dir)
    hf = GPT2LMHeadModel.from_pretrained(dest).eval()
    tok = AutoTokenizer.from_pretrained(dest)
    text = "[Math] What is 12*7?\nAnswer: 84 — naïve café 🙂\n\tdef f(x):\n        return x"
    ids = tok.encode(text)
    assert ids == get_tokenizer().encode_ordinary(text)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - ours(x)[0][..., :50257]).abs().max() < 1e-5
    assert tok.decode(ids) == text
