import os
import shutil
import subprocess
import sys

import pytest

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from nanophi import textformat
from nanophi.checkpoint import load_model
from conftest import ROOT
from nanophi.tokenizer import get_tokenizer


def run_export(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))


def snapshot(folder):
    """Every file under folder with its bytes: what a refused export must leave untouched."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


@pytest.fixture
def ckpt_folder(tiny_out_dir, tmp_path):
    """A copy of a trained out_dir with the files a real run leaves: log, adapter folders."""
    out = tmp_path / "run"
    shutil.copytree(tiny_out_dir, out)
    (out / "log.jsonl").write_text('{"iter": 0}\n')
    for adapter in ("lora", "lora_best"):
        (out / adapter).mkdir()
        (out / adapter / "nanophi_adapter.json").write_text("{}")
    return out


@pytest.mark.slow
def test_export_refuses_checkpoint_folder(ckpt_folder):
    before = snapshot(ckpt_folder)
    r = run_export(f"--out_dir={ckpt_folder}", f"--export_dir={ckpt_folder}")
    assert r.returncode == 2, r.stderr
    assert "checkpoint folder" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(ckpt_folder) == before  # best.pt, ckpt.pt, log.jsonl, adapters all still there


@pytest.mark.slow
def test_export_refuses_dot_and_foreign_folders(ckpt_folder, tmp_path):
    project = tmp_path / "project"  # stands in for a repository: `--export_dir=.` from inside it
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "notes.txt").write_text("keep me\n")
    before = snapshot(project)
    r = run_export(f"--out_dir={ckpt_folder}", "--export_dir=.", cwd=project)
    assert r.returncode == 2 and "not written by export.py" in r.stderr, r.stderr
    assert snapshot(project) == before
    # an old export plus a file the user put there is not ours to replace either
    (project / "config.json").write_text("{}")
    r = run_export(f"--out_dir={ckpt_folder}", f"--export_dir={project}")
    assert r.returncode == 2 and snapshot(project) == {**before, "config.json": b"{}"}


@pytest.fixture(scope="module")
def exported(tiny_out_dir, tmp_path_factory):
    """One export of the tiny checkpoint into an existing empty folder beside a killed export's
    temporary folder; returns the export folder."""
    exports = tmp_path_factory.mktemp("exports")
    (exports / "hf").mkdir()  # an existing empty folder is fine
    (exports / "hf.tmp-4194999").mkdir()  # a killed export's temporary folder (no such pid)
    r = run_export(f"--out_dir={tiny_out_dir}", f"--export_dir={exports / 'hf'}")
    assert r.returncode == 0, r.stderr
    return exports / "hf"


@pytest.mark.slow
def test_export_cli_round_trip(tiny_out_dir, exported):
    ours, _ = load_model("resume", out_dir=tiny_out_dir)
    hf = GPT2LMHeadModel.from_pretrained(str(exported)).eval()
    tok = AutoTokenizer.from_pretrained(str(exported))
    text = "[Math] What is 12*7?\nAnswer: 84 — naïve café 🙂\n\tdef f(x):\n        return x"
    ids = tok.encode(text)
    assert ids == get_tokenizer().encode_ordinary(text)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - ours(x)[0][..., :50257]).abs().max() < 1e-5
    assert tok.decode(ids) == text


@pytest.mark.slow
def test_export_tokenizer_and_permissions(exported):
    assert os.listdir(exported.parent) == ["hf"]  # no temporary folder left, the killed one's cleaned
    assert os.stat(exported).st_mode & 0o777 == 0o755
    assert all(os.stat(exported / f).st_mode & 0o777 == 0o644 for f in os.listdir(exported))
    tok = AutoTokenizer.from_pretrained(str(exported))
    assert tok.model_max_length == 128  # the tiny model's block_size, not GPT-2's 1024
    for system in ("", "You are a patient tutor."):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "What is 12*7?"}, {"role": "assistant", "content": " 84 "},
            {"role": "user", "content": "And 'naïve' café?\n"}]
        turns = [(m["role"], m["content"]) for m in messages if m["role"] != "system"]
        ours = textformat.chat(turns, system=system or None)
        got = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert got == textformat.render_text(ours)
        assert tok.encode(got) == get_tokenizer().encode(got, allowed_special="all") == textformat.encode_prompt(ours)


@pytest.mark.slow
def test_export_replaces_an_earlier_export(tiny_out_dir, exported, tmp_path):
    dest = tmp_path / "hf"
    shutil.copytree(exported, dest)  # an earlier export: it carries export's marker
    (dest / "model.safetensors").write_bytes(b"stale")
    r = run_export(f"--out_dir={tiny_out_dir}", f"--export_dir={dest}")
    assert r.returncode == 0, r.stderr
    assert GPT2LMHeadModel.from_pretrained(str(dest)).config.n_positions == 128
    assert os.listdir(tmp_path) == ["hf"]
