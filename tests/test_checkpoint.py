import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from nanophi.checkpoint import (BEST, LATEST, clean_state_dict, find_checkpoint, load_checkpoint, load_model,
                        save_checkpoint)
from conftest import ROOT
from model import GPT, GPTConfig


def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=128, n_layer=1, n_head=2, n_embd=16))


def test_save_load_and_prefixes(tmp_path):
    m = tiny()
    sd = {"_orig_mod." + k: v for k, v in m.state_dict().items()}  # as torch.compile names them
    path = str(tmp_path / LATEST)
    save_checkpoint(path, {"model": sd, "model_args": asdict(m.config), "iter_num": 3})
    assert os.listdir(tmp_path) == [LATEST]  # no temporary file left behind
    ck = load_checkpoint(path)
    assert ck["iter_num"] == 3
    model, source = load_model("resume", out_dir=str(tmp_path))
    assert source == path and not model.training
    for (k, v), (k2, v2) in zip(m.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert list(clean_state_dict({"module._orig_mod.x": 1})) == ["x"]


def test_loading_a_checkpoint_fills_no_random_values_and_imports_no_meta_kernels(tmp_path):
    # the model is built on the meta device; normal_ there would pull in torch's Python meta kernels
    # (sympy among them, +68 MB resident in a server) for values the checkpoint replaces anyway
    m = tiny()
    path = str(tmp_path / BEST)
    save_checkpoint(path, {"model": m.state_dict(), "model_args": asdict(m.config)})
    code = ("import sys, torch; from nanophi.checkpoint import load_model; "
            f"model, _ = load_model({path!r}); "
            "print('sympy' in sys.modules, torch.nn.init.normal_.__module__, float(model.lm_head.weight.detach().sum()))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported, normal_home, total = r.stdout.split()
    assert imported == "False" and normal_home == "torch.nn.init"  # normal_ is torch's own again afterwards
    assert float(total) == pytest.approx(float(m.lm_head.weight.detach().sum()), abs=1e-5)


def test_best_preferred_then_latest(tmp_path):
    m = tiny()
    state = {"model": m.state_dict(), "model_args": asdict(m.config)}
    save_checkpoint(str(tmp_path / LATEST), state)
    assert find_checkpoint(str(tmp_path), "best").endswith(LATEST)
    save_checkpoint(str(tmp_path / BEST), state)
    assert find_checkpoint(str(tmp_path), "best").endswith(BEST)
    assert find_checkpoint(str(tmp_path), "latest").endswith(LATEST)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        find_checkpoint(str(tmp_path / "empty"))


def test_load_model_from_hf_dir_and_errors(tiny_hf_dir, tmp_path):
    model, _ = load_model(tiny_hf_dir, block_size=256)
    assert model.config.block_size == 256
    with pytest.raises(ValueError, match="init_from='nonsense'"):
        load_model("nonsense")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="not a loadable NanoPhi checkpoint"):
        load_model(str(tmp_path / "junk.pt"))


@pytest.mark.slow
def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    """A process killed in the middle of torch.save leaves the old checkpoint intact."""
    path = str(tmp_path / LATEST)
    save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "model_args": {}, "iter_num": 1})
    code = (
        "import os, signal, torch\nfrom nanophi import checkpoint\n"
        "real = torch.save\n"
        "def dying_save(obj, f):\n"
        "    f.write(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = dying_save\n"
        f"checkpoint.save_checkpoint({path!r}, {{'model': {{}}, 'iter_num': 2}})\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert r.returncode == -9
    assert load_checkpoint(path)["iter_num"] == 1


def test_malformed_checkpoints_are_one_line_errors_before_allocation(tmp_path):
    model = tiny()
    good = {"model": model.state_dict(), "model_args": asdict(model.config)}

    def load(ckpt, name):
        path = str(tmp_path / name)
        save_checkpoint(path, ckpt)
        with pytest.raises(ValueError) as e:
            load_model(path)
        assert path in str(e.value) and "\n" not in str(e.value)
        return str(e.value)

    args = dict(good["model_args"]); del args["n_embd"]
    assert "model_args['n_embd'] is missing" in load({**good, "model_args": args}, "nokey.pt")
    args = dict(good["model_args"], n_head=5)
    assert "does not divide" in load({**good, "model_args": args}, "heads.pt")
    # a small file declaring a 13 GB model: refused by shape, nothing that size allocated
    args = dict(good["model_args"], n_embd=65536, n_layer=48, n_head=64)
    assert "model_args declare" in load({**good, "model_args": args}, "huge.pt")


class _RunsCode:
    """A pickle that calls os.system when unpickled: what an unsafe pytorch_model.bin holds."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_hf_dir_with_an_unsafe_pytorch_model_bin_is_refused_in_one_line(tmp_path):
    """A transformers folder whose pytorch_model.bin runs code: refused by torch's weights-only load
    (nothing runs), and the refusal is one line naming the folder and the call, not a traceback
    (an UnpicklingError passed through before) and not a hint to load it unsafely."""
    from conftest import make_hf_dir
    path = make_hf_dir(str(tmp_path / "hf"))
    os.remove(os.path.join(path, "model.safetensors"))
    marker = tmp_path / "ran"
    torch.save({"transformer.wte.weight": _RunsCode(marker)}, os.path.join(path, "pytorch_model.bin"))
    with pytest.raises(ValueError) as e:
        load_model(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: its pytorch_model.bin holds more than weights") and "system" in msg, msg
    assert "\n" not in msg and "weights_only" not in msg
    assert not marker.exists()
    p = subprocess.run([sys.executable, "sample.py", f"--init_from={path}", "--max_new_tokens=2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and lines[-1].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    assert not marker.exists()
