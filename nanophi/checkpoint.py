"""
Checkpoint save/load and "give me a model" for every script: one definition.

A checkpoint is a dict saved with torch.save: 'model' (raw, uncompiled state_dict), 'model_args'
(GPTConfig fields), and whatever training adds (optimizer, iter_num, best_val_loss, RNG and
sampler state, config). Writes are atomic: a temporary file in the same directory, then
os.replace, so a kill mid-write leaves the previous checkpoint loadable.

out_dir layout: ckpt.pt (latest), best.pt (lowest validation loss).
"""
import os

import torch

from model import GPT, GPTConfig

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
LATEST, BEST = "ckpt.pt", "best.pt"


def save_checkpoint(path, state):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, map_location="cpu"):
    """torch.load with weights_only=True: checkpoints hold tensors and plain Python values only."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: not a loadable NanoPhi checkpoint ({type(e).__name__}: {e})") from None


def clean_state_dict(sd):
    """Strip the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add to keys."""
    out = {}
    for k, v in sd.items():
        while k.startswith(("_orig_mod.", "module.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def model_from_checkpoint(ckpt):
    known = {f for f in GPTConfig.__dataclass_fields__}
    model = GPT(GPTConfig(**{k: v for k, v in ckpt["model_args"].items() if k in known}))
    model.load_state_dict(clean_state_dict(ckpt["model"]))
    return model


def trained_dirs(root="."):
    """Folders out*/ under root that hold a checkpoint, most recently trained first."""
    found = []
    if not os.path.isdir(root or "."):
        return found
    for name in os.listdir(root or "."):
        d = os.path.join(root, name)
        times = [os.path.getmtime(p) for p in (os.path.join(d, BEST), os.path.join(d, LATEST)) if os.path.isfile(p)]
        if name.startswith("out") and os.path.isdir(d) and times:
            found.append((max(times), d))
    return [d for _, d in sorted(found, reverse=True)]


def default_out_dir(default="out"):
    """The out_dir scripts use when none is given: 'out' if it holds a checkpoint (or nothing
    does), else the most recently trained out*/ folder (the quick start writes out-nanophi-cpu)."""
    if any(os.path.isfile(os.path.join(default, n)) for n in (BEST, LATEST)):
        return default
    found = trained_dirs(".")
    return os.path.normpath(found[0]) if found else default


def find_checkpoint(out_dir, which="best"):
    """Path of out_dir's best (falling back to latest) or latest checkpoint."""
    order = [BEST, LATEST] if which == "best" else [LATEST]
    for name in order:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            return path
    root = os.path.dirname(os.path.normpath(out_dir))
    others = [os.path.normpath(d) for d in trained_dirs(root)]
    hint = (f"folders with a checkpoint: {', '.join(others)} (pass --out_dir=<one of them>)" if others
            else "train first")
    raise FileNotFoundError(f"no checkpoint in {out_dir!r} (looked for {', '.join(order)}); {hint}, "
                            "or pass --init_from")


def is_hf_dir(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def load_model(init_from="resume", out_dir="out", device="cpu", which="best", block_size=None):
    """
    A ready model (eval mode) for sampling, serving and evaluation, and a short description.
    init_from: 'resume' (out_dir's best.pt, else ckpt.pt), a .pt file, a gpt2 name, a local
    transformers GPT-2 directory, or a LoRA adapter directory (lora.py; merged into its base).
    """
    from nanophi import lora  # LoRA runs: adapter directories and adapter checkpoints load merged into the base
    if init_from == "resume" or (isinstance(init_from, str) and init_from.endswith(".pt")):
        path = find_checkpoint(out_dir, which) if init_from == "resume" else init_from
        ckpt = load_checkpoint(path)
        model = lora.merged_from_checkpoint(ckpt, path) if "lora" in ckpt else model_from_checkpoint(ckpt)
        source = path
    elif lora.is_adapter_dir(init_from):
        model = lora.load_merged(init_from)
        source = init_from
    elif init_from in GPT2_NAMES or is_hf_dir(init_from):
        model = GPT.from_pretrained(init_from)
        source = init_from
    else:
        raise ValueError(f"init_from={init_from!r}: expected 'resume', a .pt checkpoint, one of {GPT2_NAMES}, "
                         "a directory with a transformers GPT-2 checkpoint (config.json), or a LoRA adapter directory")
    if block_size is not None:
        model.resize_block_size(block_size)
    model.eval().to(device)
    return model, source
