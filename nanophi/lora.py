"""
LoRA adapters (peft) on model.py's Linear layers, for MiniSymposium's recipe: a small
hand-written set, a very low learning rate, many epochs, only a few MB of trained weights.

An adapter directory is peft's own (adapter_config.json + adapter_model.safetensors) plus
nanophi_adapter.json naming the base model (`base`: a gpt2 name, a transformers directory or a
.pt checkpoint) and its model_args. checkpoint.load_model accepts such a directory as init_from
and returns the base with the adapter merged in (a plain GPT), so sample.py, serve.py, eval.py
and export work unchanged.
"""
import json
import os
import shutil
import tempfile

import torch

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


def save_adapter(peft_model, path, base, model_args):
    """Write the adapter directory atomically (temporary directory, then rename)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".adapter-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an adapter directory is ordinary output
    try:
        peft_model.save_pretrained(tmp)
        with open(os.path.join(tmp, META), "w") as f:
            json.dump({"base": base, "model_args": model_args}, f, indent=2)
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=".adapter-old-", dir=parent)
            os.replace(path, os.path.join(old, "a"))
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return path


def is_adapter_dir(path):
    return isinstance(path, str) and os.path.isfile(os.path.join(path, META))


def load_base(base, model_args):
    """The base model an adapter was trained on, at the block_size it was trained with."""
    from nanophi.checkpoint import load_model
    model, _ = load_model(base, block_size=model_args.get("block_size"))
    return model


def merge(model, state, lora_config):
    """Apply adapter weights to a plain GPT and fold them in: a plain GPT again."""
    peft_model = wrap(model, lora_config["r"], lora_config["lora_alpha"], 0.0, lora_config["target_modules"])
    load_adapter_state(peft_model, state)
    return peft_model.merge_and_unload()


def load_merged(path):
    """An adapter directory -> its base with the adapter merged (plain GPT, eval mode, CPU)."""
    from peft import PeftModel
    meta = json.load(open(os.path.join(path, META)))
    base = load_base(meta["base"], meta["model_args"])
    model = PeftModel.from_pretrained(base, path).merge_and_unload()
    return model.eval()


def merged_from_checkpoint(ckpt):
    """A LoRA run's ckpt.pt/best.pt (adapter tensors + base name) -> merged plain GPT."""
    base = load_base(ckpt["lora_base"], ckpt["model_args"])
    return merge(base, ckpt["lora"], ckpt["lora_config"]).eval()
