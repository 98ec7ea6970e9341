"""nanophi/lora.py: wrapping, the adapter directory and merging, on a tiny GPT."""
import os

import pytest
import torch

from model import GPT, GPTConfig
from nanophi import lora


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=32, vocab_size=128, n_layer=1, n_head=2, n_embd=32)).eval()


def perturbed(model, seed=1):
    """A wrapped model whose adapter is not a no-op (peft starts lora_B at zero)."""
    peft_model = lora.wrap(model, 4, 8, 0.0, lora.DEFAULT_TARGETS)
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return peft_model


def logits(model):
    x = torch.arange(16).unsqueeze(0)
    with torch.no_grad():
        return model(x)[0]


def test_wrap_trains_only_the_adapters():
    peft_model = lora.wrap(tiny_gpt(), 2, 4, 0.0, ["c_attn"])
    trained = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n and "c_attn" in n for n in trained)


def test_wrap_names_a_target_that_is_not_a_linear_layer():
    with pytest.raises(ValueError, match=r"lora_targets \['wte'\] are not Linear layers .*'c_attn'"):
        lora.wrap(tiny_gpt(), 2, 4, 0.0, ["c_attn", "wte"])


def test_adapter_dir_stores_its_base_relative_and_resolves_it_back(tmp_path):
    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    path = str(tmp_path / "runs" / "adapter")
    assert not lora.is_adapter_dir(path)
    lora.save_adapter(perturbed(tiny_gpt()), path, str(base), {"block_size": 32}, "ab" * 32)
    assert lora.is_adapter_dir(path)
    meta = lora.read_meta(path)
    assert meta == {"base": os.path.join("..", "..", "models", "base"), "base_sha256": "ab" * 32,
                    "model_args": {"block_size": 32}}
    assert lora.resolve_base(meta["base"], path) == str(base)
    # a hub name is not a path: stored and resolved as it is
    assert lora.portable_base("gpt2", path) == "gpt2" and lora.resolve_base("gpt2", path) == "gpt2"
    assert not [n for n in os.listdir(tmp_path / "runs") if ".tmp" in n]  # the atomic write left no temp dir


def test_merge_from_state_equals_merge_from_dir_and_changes_the_model(tmp_path):
    peft_model = perturbed(tiny_gpt())
    path = lora.save_adapter(peft_model, str(tmp_path / "adapter"), "gpt2", {}, None)
    state = lora.adapter_state(peft_model)
    lora_config = peft_model.peft_config["default"]
    from_state = lora.merge(tiny_gpt(), state, {"r": lora_config.r, "lora_alpha": lora_config.lora_alpha,
                                                "target_modules": sorted(lora_config.target_modules)})
    from_dir = lora.merge_dir(tiny_gpt(), path)
    assert type(from_state) is GPT and type(from_dir) is GPT
    assert torch.allclose(logits(from_state), logits(from_dir), atol=1e-5)
    assert not torch.allclose(logits(from_state), logits(tiny_gpt()), atol=1e-3)
