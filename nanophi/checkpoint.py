"""
Checkpoint save/load and "give me a model" for every script: one definition.

A checkpoint is a dict saved with torch.save: 'model' (raw, uncompiled state_dict), 'model_args'
(GPTConfig fields), and whatever training adds (optimizer, iter_num, best_val_loss, RNG and
sampler state, config); a LoRA run's holds 'lora' (adapter tensors), 'lora_config' and
'lora_base' (and 'lora_base_sha256', the base's weights_sha256) instead of 'model'. Writes are atomic (files.atomic_file), so a kill mid-write
leaves the previous checkpoint loadable.

out_dir layout: ckpt.pt (latest, resumable: model, optimizer, RNG, data position), best.pt (lowest
validation loss: weights only, in the training dtype), train.lock, log.jsonl.
"""
import contextlib
import hashlib
import io
import os
import pickle
import re
import socket
import urllib.parse
from collections import namedtuple

import torch

from model import GPT, GPTConfig
from nanophi import lora
from nanophi.device import autocast, pick_device, pick_dtype
from nanophi.weights import apply_weights, resolve_weights
from nanophi.files import atomic_file, write_error

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
LATEST, BEST = "ckpt.pt", "best.pt"


class _Writer(io.RawIOBase):
    """A file torch.save writes through, keeping the OS error of a failed write: torch reports a
    full disk only as its own 'iostream error' / 'unexpected pos' message."""

    def __init__(self, f):
        self.f, self.error = f, None

    def writable(self):
        return True

    def write(self, b):
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise


def save_checkpoint(path, state):
    """torch.save to a temporary name, then rename; a failed write (disk full) is a WriteError
    naming the file, and the previous checkpoint stays."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb", buffering=0) as f:
            writer = _Writer(f)
            try:
                torch.save(state, writer)
            except RuntimeError as e:
                if writer.error is None:
                    raise
                raise write_error(path, writer.error) from e


def load_checkpoint(path, map_location="cpu", mmap=False):
    """torch.load with weights_only=True: checkpoints hold tensors and plain Python values only.
    mmap: tensors read from the file as they are touched (a ckpt.pt's optimizer moments never are)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        raise RuntimeError(f"{path}: not a loadable NanoPhi checkpoint ({type(e).__name__}: {e})") from None


def peek_iter(path, key="iter_num"):
    """A checkpoint's iter_num (or another plain value) without reading its tensors (memory-mapped),
    or None if unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(key)
    except Exception:
        return None


def save_sizes(model, dtype="float32", lora=False):
    """Bytes of one ckpt.pt (resumable: fp32 weights or the LoRA adapter, AdamW's two moments) and
    one best.pt (weights only, in the training dtype). Reads shapes only, so a model built on
    torch.device('meta') (nothing allocated) answers for gpt2-medium on any machine."""
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once, as torch.save stores them
    trained = sum(p.numel() for p in params if p.requires_grad)
    kept = trained if lora else sum(p.numel() for p in params)  # a LoRA run saves its adapter, not the base
    width = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    return {"resumable": kept * 4 + trained * 8, "best": kept * width}


def clean_state_dict(sd):
    """Strip the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add to keys."""
    out = {}
    for k, v in sd.items():
        while k.startswith(("_orig_mod.", "module.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


REQUIRED_ARGS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")


def checked_args(ckpt, path="checkpoint"):
    """A checkpoint's model_args, each required one a positive int and n_head dividing n_embd."""
    args = ckpt.get("model_args") if isinstance(ckpt, dict) else None
    if not isinstance(args, dict):
        raise ValueError(f"{path}: not a NanoPhi model checkpoint (no 'model_args' dict)")
    for k in REQUIRED_ARGS:
        if not isinstance(args.get(k), int) or args[k] < 1:
            raise ValueError(f"{path}: model_args[{k!r}] is {'missing' if k not in args else repr(args[k])}; "
                             "expected a positive int")
    if args["n_embd"] % args["n_head"]:
        raise ValueError(f"{path}: model_args n_head={args['n_head']} does not divide n_embd={args['n_embd']}")
    return args


def checked_config(ckpt, path="checkpoint"):
    """The GPTConfig a checkpoint declares, checked against its own tensors before anything is
    allocated (the model is built on the meta device): a malformed file is one ValueError naming it."""
    args, sd = checked_args(ckpt, path), ckpt.get("model")
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a NanoPhi model checkpoint (no 'model' dict)")
    known = {f for f in GPTConfig.__dataclass_fields__}
    config = GPTConfig(**{k: v for k, v in args.items() if k in known})
    with torch.device("meta"):  # shapes only: a file declaring a huge model costs nothing here
        want = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in clean_state_dict(sd).items()}
    for k, shape in want.items():
        if k not in have:
            raise ValueError(f"{path}: its weights lack {k!r} that model_args declares")
        if have[k] != shape:
            raise ValueError(f"{path}: {k} has shape {have[k]}, but model_args declare {shape}")
    extra = sorted(set(have) - set(want))
    if extra:
        raise ValueError(f"{path}: weights {extra[:3]} do not belong to the model model_args declare")
    return config


@contextlib.contextmanager
def no_normal_init():
    """torch.nn.init.normal_ does nothing inside: a model built on the meta device has no values to fill,
    and normal_ on meta runs through torch's Python meta kernels, whose first use imports 800 modules
    (+68 MB resident in every server, measured)."""
    normal = torch.nn.init.normal_
    torch.nn.init.normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        torch.nn.init.normal_ = normal


def model_from_checkpoint(ckpt, path="checkpoint"):
    """The checkpoint's tensors become the model's weights (no random init, no second copy: with a
    memory-mapped checkpoint the model's peak memory is its weights once)."""
    with torch.device("meta"), no_normal_init():
        model = GPT(checked_config(ckpt, path))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in clean_state_dict(ckpt["model"]).items()}
    model.load_state_dict(sd, assign=True)
    model.transformer.wte.weight = model.lm_head.weight  # assign replaced the tied Parameter by two
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
    others = [os.path.normpath(d) for d in trained_dirs(os.path.dirname(os.path.normpath(out_dir)))]
    hint = (f"folders with a checkpoint: {', '.join(others)} (pass --out_dir=<one of them>)" if others
            else "train first")
    raise FileNotFoundError(f"no checkpoint in {out_dir!r} (looked for {', '.join(order)}); {hint}, "
                            "or pass --init_from")


def is_hf_dir(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def hub_reachable(timeout=3.0):
    """None when the Hugging Face endpoint answers a TCP connect within timeout, else why not: transformers
    would otherwise retry for about a minute and end in a long traceback."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return None
    except OSError as e:
        return f"{url.hostname} cannot be reached ({e})"


def from_hub(name):
    """GPT.from_pretrained for a gpt2 name or a local transformers directory; every failure is one line."""
    if not os.path.isdir(name):
        from huggingface_hub import try_to_load_from_cache
        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            why = hub_reachable()
            if why:
                raise ValueError(f"{name} is not in the Hugging Face cache and {why}: connect to the internet, "
                                 "or give a local transformers GPT-2 directory")
    try:
        return GPT.from_pretrained(name)
    except pickle.UnpicklingError as e:  # torch's weights-only load refused a pytorch_model.bin that runs code
        wants = re.search(r"GLOBAL (\S+)", str(e))
        raise ValueError(f"{name}: its pytorch_model.bin holds more than weights (loading it would call "
                         f"{wants.group(1) if wants else 'code'}), so it was refused; use a model.safetensors "
                         f"copy of the model, or one from a source you trust") from None
    except (OSError, ValueError) as e:  # a typo'd name, a lost connection, a malformed config.json
        first = " ".join(str(e).split())
        raise ValueError(f"{name}: {first[:300]}") from None


def load_model(init_from="resume", out_dir="out", device="cpu", which="best", block_size=None):
    """
    A ready model (eval mode) for sampling, serving and evaluation, and a short description.
    init_from: 'resume' (out_dir's best.pt, else ckpt.pt), a .pt file, a gpt2 name, a local
    transformers GPT-2 directory, or a LoRA adapter directory (lora.py; merged into its base).
    """
    if init_from == "resume" or (isinstance(init_from, str) and init_from.endswith(".pt")):
        path = find_checkpoint(out_dir, which) if init_from == "resume" else init_from
        ckpt = load_checkpoint(path, mmap=True)
        model = merged_from_checkpoint(ckpt, path) if "lora" in ckpt else model_from_checkpoint(ckpt, path)
        source = path
    elif lora.is_adapter_dir(init_from):
        model = load_merged(init_from)
        source = init_from
    elif init_from in GPT2_NAMES or is_hf_dir(init_from):
        model = from_hub(init_from)
        source = init_from
    else:
        raise ValueError(f"init_from={init_from!r}: expected 'resume', a .pt checkpoint, one of {GPT2_NAMES}, "
                         "a directory with a transformers GPT-2 checkpoint (config.json), or a LoRA adapter directory")
    if block_size is not None:
        model.resize_block_size(block_size)
    model.eval().to(device)
    return model, source


Inference = namedtuple("Inference", "model source device dtype weights n_params autocast")


def load_for_inference(init_from, out_dir, device="auto", dtype="auto", weights="auto", which="best",
                       block_size=None, batch=1):
    """The start of sample.py, serve.py and eval.py in one call: the device, dtype and weight format
    picked, the model loaded (eval mode) in that format for `batch` rows, and the autocast context to
    run it under. n_params is counted before the weights are packed."""
    dev = pick_device(device)
    ptdtype = pick_dtype(dtype, dev)
    weight_format = resolve_weights(weights, dev, ptdtype)
    if isinstance(init_from, str) and os.path.isdir(init_from) and not is_hf_dir(init_from) \
            and not lora.is_adapter_dir(init_from):
        found = [f for f in (BEST, LATEST) if os.path.isfile(os.path.join(init_from, f))]
        if found:  # a training folder: say which file in it to load
            raise ValueError(f"init_from={init_from!r} is a training folder; load its checkpoint with "
                             f"--init_from={os.path.join(init_from, found[0])} (or --out_dir={init_from})")
    try:
        model, source = load_model(init_from, out_dir, dev, which, block_size)
    except RuntimeError as e:  # torch's words for a file that is not a checkpoint: bad input, one line
        raise ValueError(f"init_from={init_from!r}: {e}") from None
    n_params = model.get_num_params()
    model = apply_weights(model, weight_format, batch=batch)
    return Inference(model, source, dev, ptdtype, weight_format, n_params, autocast(dev, ptdtype))


# ----------------------------------------------------------------------------- LoRA runs

def weights_sha256(model):
    """sha256 of a plain GPT's weights as loaded (names and fp32 values, in order): what a LoRA
    adapter records of its base, so a base trained further or replaced is noticed."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def load_base(base, model_args, owner, sha256=None):
    """The base model an adapter was trained on, at the block_size it was trained with; owner (the
    adapter folder or checkpoint) names what needs it when it is missing or is no longer the base
    it was trained on (sha256: the weights_sha256 recorded at training; older adapters have none)."""
    if base not in GPT2_NAMES and not os.path.exists(base):
        raise FileNotFoundError(f"{owner} is a LoRA adapter whose base model {base!r} is not there (moved or "
                                f"deleted?); put the base back, or move it together with the adapter")
    model, _ = load_model(base, block_size=model_args.get("block_size"))
    if sha256 and weights_sha256(model) != sha256:
        raise ValueError(f"{owner} is a LoRA adapter trained on {base!r} with weights sha256 {sha256[:12]}..., but "
                         f"{base!r} now holds other weights (trained further or replaced?); the adapter would "
                         f"give other outputs: put that base back, or train the adapter again on this one")
    return model


def load_merged(path):
    """An adapter directory -> its base with the adapter merged (plain GPT, eval mode, CPU)."""
    meta = lora.read_meta(path)
    base = load_base(lora.resolve_base(meta["base"], path), meta["model_args"], path, meta.get("base_sha256"))
    return lora.merge_dir(base, path).eval()


def merged_from_checkpoint(ckpt, path):
    """A LoRA run's ckpt.pt/best.pt at path (adapter tensors + base) -> merged plain GPT."""
    base = load_base(lora.resolve_base(ckpt["lora_base"], os.path.dirname(path)), ckpt["model_args"], path,
                     ckpt.get("lora_base_sha256"))
    return lora.merge(base, ckpt["lora"], ckpt["lora_config"]).eval()
