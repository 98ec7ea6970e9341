"""
Multitask finetuning (or training from scratch) of a GPT-2 on NanoPhi's prepared tasks.

    python train.py config/nanophi_cpu.py                      # small GPT from scratch, 2 CPU cores
    python train.py config/finetune_nanophi.py                 # Colab T4: gpt2-medium, fp16
    python train.py config/symposium_lora.py                   # LoRA on the hand-written set
    torchrun --standalone --nproc_per_node=2 train.py ...      # DDP

Settings are the globals below; config files and --key=value override them (configurator.py).
Data are data/<task>/{train,val}.bin with loss masks (nanophi/datafiles.py); `tasks` is the mixture.
Batches: each row is a window of block_size+1 tokens that starts at a document start. With
packing=True it runs on into the following documents (no padding) and the target after each
end-of-text is masked; packing=False masks everything after the first document.
Loss, checkpoints, LoRA, DDP and the Colab costs: docs/training.md.
"""
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from configurator import ConfigError, configure

# -----------------------------------------------------------------------------
# I/O
out_dir = "out"
eval_interval = 100
log_interval = 1
eval_iters = 10  # batches per task and split at each evaluation (fixed batches: comparable evals)
eval_only = False
always_save_checkpoint = True  # ckpt.pt at every evaluation; best.pt only when val improves
init_from = "scratch"  # 'scratch' | 'resume' | gpt2 name | transformers GPT-2 dir | .pt | LoRA adapter dir
seed = 1337
# logging
wandb_log = False
wandb_project = "nanophi"
wandb_run_name = "run"
plot = True  # loss-curve PNGs per task in out_dir
# data
data_dir = "data"
tasks = {"textbook": 1.0, "code": 1.0, "math": 1.0, "logic": 1.0, "roleplay": 1.0, "chat": 1.0, "excerpt": 1.0}
packing = True  # see the docstring: whole-document windows that run on into the next documents
batch_size = 8  # micro-batch rows
block_size = 256
gradient_accumulation_steps = 1  # global: divided among DDP processes
# model (scratch); pretrained models bring their own shape
n_layer = 4
n_head = 4
n_embd = 256
dropout = 0.0
bias = True
gradient_checkpointing = False
# LoRA (0 = full finetuning)
lora_rank = 0
lora_alpha = 16
lora_dropout = 0.05
lora_targets = ["c_attn", "c_proj", "c_fc"]
# optimizer
learning_rate = 1e-3
max_iters = 1000
epochs = 0.0  # > 0: set max_iters to this many passes over the mixture's train tokens
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 = off
# learning rate schedule: linear warmup, cosine decay to min_lr
decay_lr = True
warmup_iters = 50
lr_decay_iters = 0  # 0 = max_iters
min_lr = 1e-4
# system
backend = "gloo"  # DDP backend on CPU; CUDA uses nccl
device = "auto"
dtype = "auto"  # auto: bf16 on sm80+, fp16 + GradScaler on older GPUs (T4), fp32 on CPU; 'bfloat16' opt-in on CPU
compile = None  # None = on for Linux + CUDA only; True/False to force
# -----------------------------------------------------------------------------
KNOWN_TASKS = ("textbook", "code", "math", "logic", "roleplay", "chat", "excerpt", "symposium")




# ----------------------------------------------------------------------------- data

class TaskData:
    """One split of one task: its window starts and how to cut rows (x, y) from them."""

    def __init__(self, split_data, block_size, packing):
        from nanophi.tokenizer import EOT_ID
        self.s, self.T, self.packing, self.eot = split_data, block_size, packing, EOT_ID
        docs = split_data.docs
        lens = np.diff(docs)
        # a document of L tokens has L-1 targets inside it; windows of T targets cover it
        n_chunks = np.maximum(1, (lens - 1 + block_size - 1) // block_size)
        first = np.repeat(docs[:-1], n_chunks)
        within = np.arange(n_chunks.sum()) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
        self.starts = first + within * block_size
        self.doc_end = np.repeat(docs[1:], n_chunks)
        self.n_trained = int(np.count_nonzero(split_data.mask))

    def row(self, k):
        """Window number k -> (x, y) int64 arrays of length T; y = -1 where there is no target."""
        T, s = self.T, int(self.starts[k])
        toks = np.asarray(self.s.tokens[s:s + T + 1], dtype=np.int64)
        msk = np.asarray(self.s.mask[s:s + T + 1], dtype=np.int64)
        if len(toks) < T + 1:  # the split ends inside the window: pad, nothing to predict there
            pad = T + 1 - len(toks)
            toks = np.concatenate([toks, np.full(pad, self.eot, dtype=np.int64)])
            msk = np.concatenate([msk, np.zeros(pad, dtype=np.int64)])
        x, y = toks[:-1], toks[1:].copy()
        y[msk[1:] == 0] = -1
        y[x == self.eot] = -1  # never predict the next document from the end of this one
        if not self.packing:
            y[max(0, int(self.doc_end[k]) - s - 1):] = -1
        return x, y


class Sampler:
    """Random rows from the task mixture; its state (RNG, per-task counts) is in checkpoints."""

    def __init__(self, data, weights, block_size, seed):
        self.names = list(data)
        self.data = data
        w = np.array([weights[n] for n in self.names], dtype=np.float64)
        self.p = w / w.sum()
        self.T = block_size
        self.rng = np.random.default_rng(seed)
        self.targets_seen = {n: 0 for n in self.names}

    def batch(self, n):
        X = np.empty((n, self.T), dtype=np.int64)
        Y = np.empty((n, self.T), dtype=np.int64)
        for i, t in enumerate(self.rng.choice(len(self.names), size=n, p=self.p)):
            X[i], Y[i] = draw(self.data[self.names[t]], self.rng)
            self.targets_seen[self.names[t]] += int((Y[i] != -1).sum())
        return torch.from_numpy(X), torch.from_numpy(Y)

    def epochs(self):
        return {n: self.targets_seen[n] / max(1, self.data[n].n_trained) for n in self.names}

    def state(self):  # plain values only: checkpoints load with weights_only=True
        return {"rng": json.dumps(self.rng.bit_generator.state), "targets_seen": dict(self.targets_seen)}

    def load_state(self, st):
        self.rng.bit_generator.state = json.loads(st["rng"])
        for n, v in st["targets_seen"].items():
            if n in self.targets_seen:
                self.targets_seen[n] = v


def eval_batches(data, n_batches, rows, seed, task_index, split_index):
    """The fixed evaluation batches of one task and split (same windows at every evaluation)."""
    out = []
    for i in range(n_batches):
        rng = np.random.default_rng([seed, task_index, split_index, i])
        xs, ys = zip(*(draw(data, rng) for _ in range(rows)))
        out.append((torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))))
    return out


def draw(d, rng):
    """A random row of d with at least one target (redrawn otherwise: never an all-masked batch)."""
    for _ in range(100):
        x, y = d.row(int(rng.integers(len(d.starts))))
        if (y != -1).any():
            return x, y
    raise RuntimeError(f"task {d.s.task!r} {d.s.split}: 100 random windows had no trained token; check its loss mask")


def open_tasks(data_dir, tasks, block_size):
    """Check the mixture and open every task's splits; clear errors before any compute."""
    from nanophi.datafiles import TaskSplit
    if not isinstance(tasks, dict) or not tasks:
        raise ConfigError(f"tasks must be a non-empty dict {{task: weight}}, got {tasks!r}")
    for t, w in tasks.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise ConfigError(f"tasks[{t!r}]: weight must be a number, got {w!r}")
        if w < 0:
            raise ConfigError(f"tasks[{t!r}]: weight {w} is negative")
    active = {t: float(w) for t, w in tasks.items() if w > 0}
    if not active:
        raise ConfigError(f"tasks {tasks}: every mixture weight is zero; give at least one task a positive weight")
    for t in active:
        if t not in KNOWN_TASKS and not os.path.isdir(os.path.join(data_dir, t)):
            raise ConfigError(f"unknown task {t!r}: not one of {', '.join(KNOWN_TASKS)} and no directory "
                              f"{os.path.join(data_dir, t)!r}")
    data = {}
    for t in active:
        try:
            splits = {s: TaskSplit(data_dir, t, s) for s in ("train", "val")}
        except FileNotFoundError as e:
            raise ConfigError(f"missing dataset: {e}") from None
        if len(splits["train"]) < block_size + 1:
            raise ConfigError(f"block_size {block_size} is larger than task {t!r}'s whole train split "
                              f"({len(splits['train'])} tokens in {data_dir}/{t}); lower block_size or add data")
        data[t] = {s: TaskData(d, block_size, packing) for s, d in splits.items()}
        for s, d in data[t].items():
            if d.n_trained == 0:
                raise ConfigError(f"task {t!r} {s} split has no trained token (its loss mask is all 0)")
    return data, active


# ----------------------------------------------------------------------------- memory

def memory_estimate(n_params, n_trainable, cfg, batch_size, dtype, gradient_checkpointing):
    """Bytes for weights, gradients, AdamW state and activations of one micro-batch (a rough
    upper estimate: Korthikanti et al.'s 34*s*b*h per layer at 16 bits, fused attention)."""
    act = 2 if dtype in ("float16", "bfloat16") else 4
    s, b, h, L, V = cfg.block_size, batch_size, cfg.n_embd, cfg.n_layer, cfg.vocab_size
    per_layer = 34 * s * b * h * act / 2
    if gradient_checkpointing:  # keep each block's input, recompute one block at a time
        layers = L * s * b * h * act + per_layer
    else:
        layers = L * per_layer
    logits = s * b * V * (act + 4 + 4)  # logits, their float upcast for the loss, its gradient
    est = {
        "weights": n_params * 4 + (n_params * act if act == 2 else 0),  # fp32 master + autocast copies
        "grads": n_trainable * 4,
        "optimizer": n_trainable * 8,
        "activations": layers + logits,
    }
    est["total"] = sum(est.values())
    return est


def device_memory(device_type):
    if device_type == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    import psutil
    return psutil.virtual_memory().available


# ----------------------------------------------------------------------------- plots

def plot_losses(out_dir):
    """out_dir/loss_<task>.png for every task (and 'all'), from log.jsonl; written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.isfile(path):
        return []
    train, evals = [], []
    for line in open(path):
        rec = json.loads(line)
        (train if rec["type"] == "train" else evals if rec["type"] == "eval" else []).append(rec)
    names = sorted({k for e in evals for k in e["val"]}, key=lambda k: (k == "all", k))
    written = []
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        if name == "all" and train:
            ax.plot([r["iter"] for r in train], [r["loss"] for r in train], alpha=0.4, label="train (batch)")
        for split in ("train", "val"):
            pts = [(e["iter"], e[split][name]) for e in evals if name in e.get(split, {})]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{split} (eval)")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_title(f"{name} loss")
        ax.legend()
        out = os.path.join(out_dir, f"loss_{name}.png")
        tmp = out + ".tmp.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, out)
        written.append(out)
    return written


# ----------------------------------------------------------------------------- main

def get_lr(it):
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    end = lr_decay_iters or max_iters
    if it >= end:
        return min_lr
    ratio = (it - warmup_iters) / max(1, end - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def set_dropout(model, p):
    from model import CausalSelfAttention
    model.config.dropout = p
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if isinstance(m, CausalSelfAttention):
            m.dropout = p


def numpy_state():
    """np.random's global state as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def fmt_tokens(n):
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def main(argv=None):
    """Train; argv as sys.argv[1:] (tests call main in-process). Returns a summary dict."""
    global max_iters, block_size
    config = configure(globals(), argv)
    from nanophi import checkpoint as ckpt_lib
    from nanophi import lora as lora_lib
    from nanophi.device import autocast, device_name, pick_device, pick_dtype
    from model import GPT, GPTConfig

    # ---- checks that need no data and no compute
    if batch_size < 1 or gradient_accumulation_steps < 1:
        raise ConfigError(f"batch_size ({batch_size}) and gradient_accumulation_steps "
                          f"({gradient_accumulation_steps}) must be at least 1")
    if block_size < 2 and init_from != "resume":
        raise ConfigError(f"block_size must be at least 2, got {block_size}")
    if eval_interval < 1 or eval_iters < 1 or log_interval < 1:
        raise ConfigError("eval_interval, eval_iters and log_interval must be at least 1")
    if lora_rank < 0:
        raise ConfigError(f"lora_rank must be >= 0 (0 = full finetuning), got {lora_rank}")
    if lora_rank and init_from == "scratch":
        raise ConfigError("lora_rank > 0 adapts a pretrained model: set init_from to a gpt2 name, a transformers "
                          "directory or a .pt checkpoint (or lora_rank=0 to train from scratch)")

    # ---- DDP
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        import torch.distributed as dist
        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if gradient_accumulation_steps % world:
            raise ConfigError(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the "
                              f"number of processes ({world})")
        dev = f"cuda:{local_rank}" if (device == "auto" and torch.cuda.is_available()) or device.startswith("cuda") else "cpu"
        if dev.startswith("cuda"):
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.startswith("cuda") else backend)
    else:
        rank, local_rank, world = 0, 0, 1
        dev = pick_device(device)
    master = rank == 0
    accum_local = gradient_accumulation_steps // world
    device_type = torch.device(dev).type
    ptdtype = pick_dtype(dtype, dev)
    use_compile = compile if compile is not None else (sys.platform.startswith("linux") and device_type == "cuda")

    # ---- resume: the checkpoint decides the model shape
    resume = init_from == "resume"
    ck = None
    if resume:
        ck = ckpt_lib.load_checkpoint(os.path.join(out_dir, ckpt_lib.LATEST))
        if ck["model_args"]["block_size"] != block_size and master:
            print(f"resume: block_size {ck['model_args']['block_size']} from the checkpoint (config said {block_size})")
        block_size = ck["model_args"]["block_size"]

    # ---- data (all errors before any compute)
    data, weights = open_tasks(data_dir, tasks, block_size)
    train_data = {t: d["train"] for t, d in data.items()}
    tokens_per_iter = batch_size * block_size * gradient_accumulation_steps
    if epochs > 0:
        total = sum(len(d.s) for d in train_data.values())
        max_iters = max(1, math.ceil(epochs * total / tokens_per_iter))
        if master:
            print(f"epochs={epochs}: max_iters = {max_iters} ({fmt_tokens(total)} train tokens, "
                  f"{fmt_tokens(tokens_per_iter)} per iteration)")
    if decay_lr and warmup_iters >= max_iters and master:
        print(f"WARNING: warmup_iters ({warmup_iters}) >= max_iters ({max_iters}): the run never leaves warmup "
              f"and never reaches learning_rate {learning_rate}; lower warmup_iters")

    if master:
        os.makedirs(out_dir, exist_ok=True)
        print("tasks: " + ", ".join(f"{t} {w / sum(weights.values()):.2f} ({fmt_tokens(len(train_data[t].s))} train, "
                                      f"{fmt_tokens(len(data[t]['val'].s))} val)" for t, w in weights.items()))
        print(f"tokens per iteration: {tokens_per_iter:,} = {batch_size} rows x {block_size} x "
              f"{gradient_accumulation_steps} accumulation ({world} process{'es' if world > 1 else ''})")
    torch.manual_seed(seed + rank)
    random.seed(seed)
    sampler = Sampler(train_data, weights, block_size, seed)

    # ---- model
    lora_base = None
    if resume:
        if "lora" in ck:
            lora_base = ck["lora_base"]
            model = lora_lib.load_base(lora_base, ck["model_args"])
        else:
            model = ckpt_lib.model_from_checkpoint(ck)
    elif init_from == "scratch":
        model = GPT(GPTConfig(block_size=block_size, vocab_size=50304, n_layer=n_layer, n_head=n_head,
                              n_embd=n_embd, dropout=dropout, bias=bias))
    else:
        model, source = ckpt_lib.load_model(init_from, out_dir, "cpu", which="best", block_size=block_size)
        lora_base = os.path.abspath(source) if os.path.exists(source) else source
        if master:
            print(f"init from {source}" + (f" (block_size {block_size})" if block_size else ""))
    set_dropout(model, dropout if not resume else ck["model_args"].get("dropout", dropout))
    model.config.gradient_checkpointing = gradient_checkpointing
    model_args = asdict(model.config)
    n_params = model.get_num_params()
    if lora_rank or (resume and "lora" in ck):
        lcfg = ck["lora_config"] if resume else {"r": lora_rank, "lora_alpha": lora_alpha,
                                                  "lora_dropout": lora_dropout, "target_modules": list(lora_targets)}
        model = lora_lib.wrap(model, lcfg["r"], lcfg["lora_alpha"], lcfg["lora_dropout"], lcfg["target_modules"])
        if resume:
            lora_lib.load_adapter_state(model, ck["lora"])
    else:
        lcfg = None
    model.train()
    model.to(dev)
    gpt = model.get_base_model() if lcfg else model  # the plain GPT (shared modules)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if master:
        n_total = sum(p.numel() for p in model.parameters())
        print(f"model: {n_total / 1e6:.2f}M parameters ({n_trainable / 1e6:.3f}M trained"
              + (f", LoRA r={lcfg['r']} on {lcfg['target_modules']}" if lcfg else "") + f"), block_size {block_size}")
        mem = memory_estimate(n_params, n_trainable, gpt.config, batch_size, ptdtype, gradient_checkpointing)
        have = device_memory(device_type)
        gb = lambda x: f"{x / 2**30:.2f}"
        print(f"memory estimate (GiB): weights {gb(mem['weights'])}, grads {gb(mem['grads'])}, optimizer "
              f"{gb(mem['optimizer'])}, activations {gb(mem['activations'])} = {gb(mem['total'])} of {gb(have)} "
              f"{'on ' + device_name(dev) if device_type == 'cuda' else 'RAM available'}")
        if mem["total"] > 0.9 * have:
            print(f"WARNING: this will likely not fit ({gb(mem['total'])} GiB needed, {gb(have)} GiB available): "
                  f"lower batch_size (raise gradient_accumulation_steps to keep the batch), set "
                  f"gradient_checkpointing=True, lower block_size, or use LoRA (lora_rank=8)")
        print(f"device {device_name(dev)}, dtype {ptdtype}, compile {use_compile}")

    scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == "float16" and device_type == "cuda"))
    optimizer = gpt.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
    iter_num, best_val_loss, last_eval_iter, tokens_seen = 0, 1e9, -1, 0
    if resume:
        optimizer.load_state_dict(ck["optimizer"])
        if "scaler" in ck and scaler.is_enabled():
            scaler.load_state_dict(ck["scaler"])
        iter_num, best_val_loss = ck["iter_num"], ck["best_val_loss"]
        last_eval_iter, tokens_seen = ck.get("last_eval_iter", -1), ck.get("tokens_seen", 0)
        sampler.load_state(ck["sampler"])
        torch.set_rng_state(ck["rng"]["torch"])
        if rank:
            torch.manual_seed(seed + rank + 1000 * iter_num)
        if device_type == "cuda" and ck["rng"].get("cuda"):
            torch.cuda.set_rng_state(ck["rng"]["cuda"][0])
        npst = ck["rng"]["numpy"]
        np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
        py = ck["rng"]["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        if master:
            print(f"resumed from {out_dir}/ckpt.pt at iter {iter_num} (best val {best_val_loss:.4f})")
        del ck
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    eval_model = model  # compiled, not DDP-wrapped
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    ctx = autocast(dev, ptdtype)

    # ---- fixed evaluation batches; each process evaluates every world-th batch, sums are all-reduced
    names = list(weights)
    probs = {t: w / sum(weights.values()) for t, w in weights.items()}
    evals = {(t, s): [b for i, b in enumerate(eval_batches(data[t][s], eval_iters, batch_size, seed, ti, si))
                      if i % world == rank]
             for ti, t in enumerate(names) for si, s in enumerate(("train", "val"))}

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        sums = torch.zeros(len(names), 2, 2, dtype=torch.float64)
        for ti, t in enumerate(names):
            for si, s in enumerate(("train", "val")):
                for X, Y in evals[(t, s)]:
                    with ctx:
                        _, loss = eval_model(X.to(dev), Y.to(dev), reduction="sum")
                    sums[ti, si, 0] += loss.item()
                    sums[ti, si, 1] += (Y != -1).sum().item()
        if ddp:
            dist.all_reduce(sums)
        model.train()
        out = {}
        for si, s in enumerate(("train", "val")):
            per = {t: (sums[ti, si, 0] / sums[ti, si, 1]).item() for ti, t in enumerate(names)}
            per["all"] = sum(probs[t] * per[t] for t in names)  # the mixture's expected loss
            out[s] = per
        return out

    def log_json(rec):
        with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")

    def state(it):
        st = {"model_args": model_args, "iter_num": it, "best_val_loss": best_val_loss,
              "last_eval_iter": last_eval_iter, "tokens_seen": tokens_seen, "config": config,
              "optimizer": optimizer.state_dict(), "sampler": sampler.state(),
              "rng": {"torch": torch.get_rng_state(), "numpy": numpy_state(),
                      "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
                      "cuda": list(torch.cuda.get_rng_state_all()) if device_type == "cuda" else []}}
        if scaler.is_enabled():
            st["scaler"] = scaler.state_dict()
        if lcfg:
            st.update(lora=lora_lib.adapter_state(raw_model), lora_config=lcfg, lora_base=lora_base)
        else:
            st["model"] = ckpt_lib.clean_state_dict(raw_model.state_dict())
        return st

    def save(it, best=False):
        st = state(it)
        ckpt_lib.save_checkpoint(os.path.join(out_dir, ckpt_lib.LATEST), st)
        if lcfg:
            lora_lib.save_adapter(raw_model, os.path.join(out_dir, "lora"), lora_base, model_args)
        if best:  # for sampling and evaluation: no optimizer state (a third of the size for AdamW)
            ckpt_lib.save_checkpoint(os.path.join(out_dir, ckpt_lib.BEST), {k: v for k, v in st.items() if k != "optimizer"})
            if lcfg:
                lora_lib.save_adapter(raw_model, os.path.join(out_dir, "lora_best"), lora_base, model_args)

    if wandb_log and master:
        import wandb
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)

    # ---- SIGINT / SIGTERM: finish the current step, save, exit
    stop = {"sig": 0}

    def on_signal(signum, frame):
        stop["sig"] = signum
    old_handlers = [signal.signal(signal.SIGINT, on_signal), signal.signal(signal.SIGTERM, on_signal)]

    chinchilla = 20 * n_params
    t0 = time.time()
    saved_iter = iter_num if resume else -1
    lossf = None
    summary = {}
    while True:
        sig = torch.tensor([stop["sig"]])
        if ddp:
            dist.all_reduce(sig, op=dist.ReduceOp.MAX)
        if int(sig):
            if master:
                save(iter_num)
                print(f"{signal.Signals(int(sig)).name}: saved {out_dir}/ckpt.pt at iter {iter_num}; "
                      f"resume with --init_from=resume")
                if plot:
                    plot_losses(out_dir)
            if ddp:
                dist.destroy_process_group()
            sys.exit(128 + int(sig))

        lr = get_lr(iter_num)
        for g in optimizer.param_groups:
            g["lr"] = lr

        if (iter_num % eval_interval == 0 or iter_num == max_iters) and iter_num != last_eval_iter:
            losses = estimate_loss()
            last_eval_iter = iter_num
            summary[iter_num] = losses
            if master:
                print(f"eval {iter_num}: val " + ", ".join(f"{t} {v:.4f}" for t, v in losses["val"].items())
                      + f" | train all {losses['train']['all']:.4f}")
                log_json({"type": "eval", "iter": iter_num, "val": losses["val"], "train": losses["train"],
                          "tokens": tokens_seen})
                if wandb_log:
                    wandb.log({"iter": iter_num, **{f"val/{t}": v for t, v in losses["val"].items()},
                               **{f"train/{t}": v for t, v in losses["train"].items()}})
                improved = losses["val"]["all"] < best_val_loss and iter_num > 0
                if improved:
                    best_val_loss = losses["val"]["all"]
                if iter_num > 0 and (always_save_checkpoint or improved):
                    save(iter_num, best=improved)
                    saved_iter = iter_num
                    print(f"saved {out_dir}/ckpt.pt" + (" and best.pt" if improved else ""))
            t0 = time.time()  # the step's time excludes the evaluation
        if eval_only or iter_num >= max_iters:
            break

        # ---- one optimizer step over the global batch; every process draws the same global
        # batch (same sampler state) and takes its own micro-batches, so DDP == one process
        X, Y = sampler.batch(batch_size * gradient_accumulation_steps)
        n_targets = int((Y != -1).sum())  # > 0: the sampler never returns a row without targets
        loss_sum = torch.zeros((), dtype=torch.float64)
        for micro in range(accum_local):
            k = (micro * world + rank) * batch_size
            x = X[k:k + batch_size].to(dev, non_blocking=True)
            y = Y[k:k + batch_size].to(dev, non_blocking=True)
            if ddp:
                model.require_backward_grad_sync = micro == accum_local - 1
            with ctx:
                _, loss = model(x, y, reduction="sum")
            loss_sum += loss.detach().double().cpu()
            # gradient of the mean over all targets of the global batch (DDP averages over processes)
            scaler.scale(loss * (world / n_targets)).backward()
        if ddp:
            dist.all_reduce(loss_sum)
        lossf = loss_sum.item() / n_targets
        if not math.isfinite(lossf) and not scaler.is_enabled():
            raise RuntimeError(f"iter {iter_num}: loss is {lossf}; lower learning_rate or use dtype=float32")
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += tokens_per_iter

        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % log_interval == 0 and master:
            tok_s = tokens_per_iter / dt
            mfu, achieved = gpt.estimate_mfu(batch_size * accum_local, dt, dev)  # per process
            eps = sampler.epochs()
            speed = f"mfu {mfu * 100:.1f}%" if mfu is not None else f"{achieved / 1e12:.3f} TFLOP/s"
            print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {dt * 1000:.0f}ms, {tok_s:,.0f} tok/s, {speed}, "
                  f"epochs " + " ".join(f"{t} {e:.2f}" for t, e in eps.items())
                  + f", tokens {fmt_tokens(tokens_seen)} = {tokens_seen / chinchilla:.2g}x chinchilla (20 tok/param)")
            rec = {"type": "train", "iter": iter_num, "loss": lossf, "lr": lr, "ms": dt * 1000, "tok_per_s": tok_s,
                   "tokens": tokens_seen, "mfu": mfu, "flops_per_s": achieved, "epochs": eps,
                   "chinchilla": tokens_seen / chinchilla}
            log_json(rec)
            if wandb_log:
                wandb.log({k: v for k, v in rec.items() if k not in ("type", "epochs")})
        iter_num += 1

    if master and not eval_only and saved_iter != iter_num:
        save(iter_num)
    if master and plot and not eval_only:
        for p in plot_losses(out_dir):
            print(f"wrote {p}")
    if wandb_log and master:
        wandb.finish()
    signal.signal(signal.SIGINT, old_handlers[0])
    signal.signal(signal.SIGTERM, old_handlers[1])
    if ddp:
        dist.destroy_process_group()
    return {"iter_num": iter_num, "loss": lossf, "best_val_loss": best_val_loss, "evals": summary}


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
