"""
LoRA adapters (peft) on model.py's Linear layers, for MiniSymposium's recipe: a small
hand-written set, a very low learning rate, many epochs, only a few MB of trained weights.

An adapter directory is peft's own (adapter_config.json + adapter_model.safetensors) plus
nanophi_adapter.json naming the base model (`base`: a gpt2 name, a transformers directory or a
.pt checkpoint), the sha256 of its weights (`base_sha256`: checked at load, so a base trained
further is refused rather than silently changing the adapter's output) and its model_args. checkpoint.load_model accepts such a directory as init_from
and returns the base with the adapter merged in (a plain GPT), so sample.py, serve.py, eval.py
and export work unchanged. This module knows peft only; loading base models is checkpoint.py's.
"""
import json
import os

import torch

from nanophi.files import atomic_dir, write_json_atomic

META = "nanophi_adapter.json"
DEFAULT_TARGETS = ["c_attn", "c_proj", "c_fc"]  # every Linear in a block (attention and MLP)


def wrap(model, rank, alpha, dropout, targets):
    """The model with LoRA adapters on the target Linear layers; only the adapters train."""
    from peft import LoraConfig, get_peft_model
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    bad = [t for t in targets if t not in names]
    if bad:
        raise ValueError(f"lora_targets {bad} are not Linear layers of the model; choose from {sorted(names)}")
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    return get_peft_model(model, cfg)


def adapter_state(peft_model):
    from peft import get_peft_model_state_dict
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def load_adapter_state(peft_model, state):
    from peft import set_peft_model_state_dict
    set_peft_model_state_dict(peft_model, state)


def portable_base(base, folder):
    """A base that is a path is stored relative to the folder holding the adapter (or checkpoint),
    so the two can move together (to Drive, another machine); a gpt2 name stays as it is."""
    return os.path.relpath(os.path.abspath(base), os.path.abspath(folder)) if os.path.exists(base) else base


def resolve_base(base, folder):
    """The stored base back to what load_model takes: relative paths are from folder (absolute
    paths, as older adapters stored them, pass through)."""
    candidate = os.path.join(folder, base)
    return os.path.normpath(candidate) if os.path.exists(candidate) else base


def save_adapter(peft_model, path, base, model_args, base_sha256):
    """Write the adapter directory atomically (filled under a temporary name, then swapped in)."""
    with atomic_dir(path) as tmp:
        peft_model.save_pretrained(tmp)
        write_json_atomic(os.path.join(tmp, META), {"base": portable_base(base, path), "base_sha256": base_sha256,
                                                    "model_args": model_args})
    return path


def is_adapter_dir(path):
    return isinstance(path, str) and os.path.isfile(os.path.join(path, META))


def read_meta(path):
    """nanophi_adapter.json of an adapter directory: {'base': ..., 'model_args': ...}."""
    with open(os.path.join(path, META)) as f:
        return json.load(f)


def merge(model, state, lora_config):
    """Apply adapter weights to a plain GPT and fold them in: a plain GPT again."""
    peft_model = wrap(model, lora_config["r"], lora_config["lora_alpha"], 0.0, lora_config["target_modules"])
    load_adapter_state(peft_model, state)
    return peft_model.merge_and_unload()


def merge_dir(model, path):
    """Apply an adapter directory to its base model (a plain GPT) and fold it in."""
    from peft import PeftModel
    return PeftModel.from_pretrained(model, path).merge_and_unload()
