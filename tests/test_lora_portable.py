"""A LoRA adapter keeps its base portably: moved together they still load; moved apart, the error
names the missing base and how to fix it (not init_from)."""
import json
import os
import shutil

import pytest
import torch

from conftest import make_hf_dir
from nanophi import lora
from nanophi.checkpoint import load_model


def make_adapter(root):
    """root/base (a tiny transformers GPT-2) and root/run/lora (an adapter on it, as train.py saves it)."""
    base = make_hf_dir(str(root / "base"), n_positions=64)
    model, _ = load_model(base)
    peft_model = lora.wrap(model, 4, 8, 0.0, ["c_attn"])
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # peft starts B at zero: make the adapter change the model
    adapter = lora.save_adapter(peft_model, str(root / "run" / "lora"), os.path.abspath(base), {"block_size": 64})
    return base, adapter


def test_adapter_moved_with_its_base_still_loads(tmp_path):
    base, adapter = make_adapter(tmp_path / "project")
    assert json.load(open(os.path.join(adapter, lora.META)))["base"] == os.path.join("..", "..", "base")
    x = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        before = load_model(adapter)[0](x)[0]
        assert (before - load_model(base)[0](x)[0]).abs().max() > 1e-4
    shutil.move(str(tmp_path / "project"), str(tmp_path / "moved"))  # the whole project folder moves
    with torch.no_grad():
        after = load_model(str(tmp_path / "moved" / "run" / "lora"))[0](x)[0]
    torch.testing.assert_close(before, after)


def test_adapter_without_its_base_names_it(tmp_path):
    _, adapter = make_adapter(tmp_path / "project")
    shutil.move(adapter, str(tmp_path / "lora"))  # the adapter alone
    shutil.rmtree(tmp_path / "project" / "base")  # and the base is gone from where it was
    with pytest.raises(FileNotFoundError) as e:
        load_model(str(tmp_path / "lora"))
    msg = str(e.value)
    assert "base model '../../base' is missing" in msg and os.path.join(str(tmp_path / "lora"), lora.META) in msg
    assert "init_from" not in msg
