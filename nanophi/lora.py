"""
LoRA adapters (peft) on model.py's Linear layers, for MiniSymposium's recipe: a small
hand-written set, a very low learning rate, many epochs, only a few MB of trained weights.

An adapter directory is peft's own (adapter_config.json + adapter_model.safetensors) plus
nanophi_adapter.json naming the base model (`base`: a gpt2 name, or a transformers directory or
.pt checkpoint stored relative to the adapter directory when it is nearby, so the two can move
together) and its model_args. checkpoint.load_model accepts such a directory as init_from
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
            json.dump({"base": portable_base(base, path), "base_when_trained": base, "model_args": model_args},
                      f, indent=2)
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


def portable_base(base, adapter_dir):
    """How an adapter stores its base: a local path relative to the adapter directory when it is
    nearby (at most 3 levels up), so copying a project folder keeps them together; else as given."""
    if not os.path.exists(base):
        return base  # a model name (gpt2, gpt2-medium, ...)
    rel = os.path.relpath(os.path.abspath(base), os.path.abspath(adapter_dir))
    return rel if rel.split(os.sep).count("..") <= 3 else os.path.abspath(base)


def resolve_base(base, where=None, trained=None):
    """The base model to load: a model name as is; a path relative to `where` (the adapter
    directory or the checkpoint's folder), else as given, else where it was at training time.
    A missing base is an error naming it and how to fix it."""
    from nanophi.checkpoint import GPT2_NAMES
    if base in GPT2_NAMES:
        return base
    tried = [os.path.normpath(os.path.join(where, base))] if where and not os.path.isabs(base) else []
    tried += [p for p in (base, trained) if p and p not in tried]
    for path in tried:
        if os.path.exists(path):
            return path
    what = f"LoRA adapter {where}" if where and is_adapter_dir(where) else f"the LoRA checkpoint in {where or '.'}"
    fix = (f"edit \"base\" in {os.path.join(where, META)} to where it is now (a path relative to the adapter "
           f"folder, an absolute path, or a gpt2 name)" if where and is_adapter_dir(where)
           else "put the base model back at that path")
    raise FileNotFoundError(f"{what}: its base model {base!r} is missing (looked at {', '.join(tried)}). "
                            f"Move the base model and the adapter together, or {fix}")


def load_base(base, model_args, where=None, trained=None):
    """The base model an adapter was trained on, at the block_size it was trained with."""
    from nanophi.checkpoint import load_model
    model, _ = load_model(resolve_base(base, where, trained), block_size=model_args.get("block_size"))
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
    base = load_base(meta["base"], meta["model_args"], where=path, trained=meta.get("base_when_trained"))
    model = PeftModel.from_pretrained(base, path).merge_and_unload()
    return model.eval()


def merged_from_checkpoint(ckpt, path=None):
    """A LoRA run's ckpt.pt/best.pt (adapter tensors + base name) -> merged plain GPT."""
    base = load_base(ckpt["lora_base"], ckpt["model_args"], where=os.path.dirname(path) if path else None)
    return merge(base, ckpt["lora"], ckpt["lora_config"]).eval()
