"""
Multitask finetuning (or training from scratch) of a GPT-2 on NanoPhi's prepared tasks.

    python train.py config/nanophi_cpu_base.py                 # small GPT from scratch, 2 CPU cores
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
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist

from configurator import ConfigError, at_least, between, configure, matches, one_of, run_main
from model import GPT, CausalSelfAttention, GPTConfig
from nanophi import checkpoint as ckpt_lib
from nanophi import lora as lora_lib
from nanophi.datafiles import TaskSplit, inputs_targets, prepared_dir
from nanophi.files import WriteError, write_text_atomic
from nanophi.device import (CPU_COMPILE_MIN_ITERS, autocast, check_device, compile_by_default, device_name,
                            peak_flops, pick_device, pick_dtype)
from nanophi.plots import plot_losses, read_log
from nanophi.tasks import TASK_NAMES, default_mixture
from nanophi.tokenizer import EOT_ID

# -----------------------------------------------------------------------------
# I/O
out_dir = "out"  # checkpoints (ckpt.pt latest, best.pt lowest val loss), log.jsonl, loss plots
eval_interval = 100  # evaluate (and save) every this many iterations, and at the end
log_interval = 1  # print and log the training loss every this many iterations
eval_iters = 10  # batches per task and split at each evaluation (fixed batches: comparable evals)
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # ckpt.pt at every evaluation; False: when val improves (or the clock below)
save_interval_min = 0.0  # > 0: ckpt.pt every this many minutes (and no longer with each new best.pt)
init_from = "scratch"  # 'scratch' | 'resume' | gpt2 name | transformers GPT-2 dir | .pt | LoRA adapter dir
overwrite = False  # a new (not resumed) run may replace the trained run already in out_dir
data_changed_ok = False  # resume although the prepared data differ from the checkpoint's (re-prepared tasks)
seed = 1337  # seeds the model init, dropout and the batch sampler
# logging
wandb_log = False  # log to Weights & Biases
wandb_project = "nanophi"  # wandb project
wandb_run_name = "run"  # wandb run name
plot = True  # loss-curve PNGs per task in out_dir
# data
data_dir = "data"  # prepared tasks: <data_dir>/<task>/{train,val}.bin (data/prepare_all.py)
tasks = default_mixture()  # {task: weight}: the mixture batches are drawn from
packing = True  # see the docstring: whole-document windows that run on into the next documents
batch_size = 8  # micro-batch rows
block_size = 256  # context length; a pretrained model is cropped or grown to it
gradient_accumulation_steps = 1  # micro-batches per step; global: divided among DDP processes
# model (scratch); pretrained models bring their own shape
n_layer = 4  # transformer blocks
n_head = 4  # attention heads (must divide n_embd)
n_embd = 256  # width
dropout = 0.0  # dropout probability while training
bias = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
gradient_checkpointing = False  # recompute activations in backward: long contexts in less memory
embedding_init_std = 0.02  # scratch: std of the token embeddings' init (GPT-2's 0.02); larger keeps unread tokens distinct
train_embeddings = "all"  # all | seen: only the rows of tokens in the training data | none (tied: the output head too)
# LoRA (0 = full finetuning)
lora_rank = 0  # adapter rank r; > 0 trains LoRA adapters on a pretrained model instead of all weights
lora_alpha = 16  # adapter scale alpha (the update is scaled by alpha / r)
lora_dropout = 0.05  # dropout on the adapters' input
lora_targets = ["c_attn", "c_proj", "c_fc"]  # Linear layers that get adapters
# optimizer
learning_rate = 1e-3  # peak learning rate (AdamW)
max_iters = 1000  # optimizer steps
epochs = 0.0  # > 0: set max_iters to this many passes over the mixture's train tokens
weight_decay = 0.1  # AdamW weight decay on matrices and embeddings
beta1 = 0.9  # AdamW beta1
beta2 = 0.95  # AdamW beta2
grad_clip = 1.0  # clip the gradient norm to this; 0 = off
# learning rate schedule: linear warmup, cosine decay to min_lr
decay_lr = True  # False: constant learning_rate
warmup_iters = 50  # linear warmup steps
lr_decay_iters = 0  # cosine decay ends here; 0 = max_iters
min_lr = 1e-4  # learning rate at the end of the decay
# system
backend = "gloo"  # DDP backend on CPU; CUDA uses nccl
device = "auto"  # auto | cpu | cuda | cuda:N | mps
dtype = "auto"  # auto: bf16 on sm80+, fp16 + GradScaler on older GPUs (T4); on CPU the faster of fp32/bf16, probed once (device.probe_cpu_dtype)
compile = None  # None = on for Linux + CUDA, and on a Linux CPU from device.CPU_COMPILE_MIN_ITERS iterations; True/False to force
LOCK = "train.lock"  # in out_dir: the pid of the run writing there
# -----------------------------------------------------------------------------
CHECKS = {  # ranges and choices, checked once every config file and --key=value is in
    **{k: at_least(1) for k in ("eval_interval", "log_interval", "eval_iters", "batch_size",
                                "gradient_accumulation_steps", "n_layer", "n_head", "n_embd")},
    **{k: at_least(0) for k in ("max_iters", "warmup_iters", "lr_decay_iters", "lora_rank", "seed")},
    **{k: at_least(0.0) for k in ("save_interval_min", "epochs", "learning_rate", "min_lr", "weight_decay",
                                  "grad_clip", "lora_alpha", "embedding_init_std")},
    **{k: between(0.0, 1.0) for k in ("dropout", "lora_dropout", "beta1", "beta2")},
    "device": matches(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:N"),
    "dtype": one_of("auto", "float32", "bfloat16", "float16"),
    "compile": one_of(None, True, False),
    "train_embeddings": one_of("all", "seen", "none"),
    "backend": one_of("gloo", "nccl"),
}



# ----------------------------- set-up: settings, processes, the checkpoint to resume

def check_settings():
    """Checks across settings that need neither data nor a checkpoint (single ranges: CHECKS)."""
    if block_size < 2 and init_from != "resume":
        raise ConfigError(f"block_size must be at least 2, got {block_size}")
    if init_from == "scratch" and n_embd % n_head:
        raise ConfigError(f"n_head={n_head} does not divide n_embd={n_embd}: each head gets n_embd / n_head "
                          f"dimensions; choose n_head among {[h for h in range(1, 33) if n_embd % h == 0]}")
    if lora_rank and init_from == "scratch":
        raise ConfigError("lora_rank > 0 adapts a pretrained model: set init_from to a gpt2 name, a transformers "
                          "directory or a .pt checkpoint (or lora_rank=0 to train from scratch)")


def setup_distributed():
    """(ddp, rank, local_rank, world, device) from torchrun's environment; one process without it."""
    if int(os.environ.get("RANK", -1)) == -1:
        try:
            return False, 0, 0, 1, pick_device(device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if gradient_accumulation_steps % world:
        raise ConfigError(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the "
                          f"number of processes ({world})")
    cuda = (device == "auto" and torch.cuda.is_available()) or device.startswith("cuda")
    dev = f"cuda:{local_rank}" if cuda else "cpu"
    if cuda:
        try:
            check_device(dev)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if cuda else backend)
    return True, rank, local_rank, world, dev


def load_resume_checkpoint(sources, master):
    """out_dir's ckpt.pt, refused when the settings ask for another model than the one it holds."""
    path = os.path.join(out_dir, ckpt_lib.LATEST)
    try:
        ck = ckpt_lib.load_checkpoint(path)
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError(f"init_from=resume: {e}; check --out_dir") from None
    try:  # a malformed file is one line naming it, before anything is allocated (a LoRA run holds adapters too)
        (ckpt_lib.checked_args if "lora" in ck else ckpt_lib.checked_config)(ck, path)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    args = ck["model_args"]
    for k in ("n_layer", "n_head", "n_embd", "bias"):
        if k in sources and globals()[k] != args[k]:
            raise ConfigError(f"{sources[k]}: {k}={globals()[k]}, but {path} holds a model with {k}={args[k]}; a "
                              f"resumed run keeps its shape: drop the setting, or start a new run in another out_dir")
    if lora_rank and "lora" not in ck:
        raise ConfigError(f"lora_rank={lora_rank} ({sources.get('lora_rank', 'default')}), but {path} is a full "
                          f"finetune, not a LoRA run; to train adapters on it start a new run: "
                          f"--init_from={path} --lora_rank={lora_rank} --out_dir=<another folder>")
    if "lora" in ck and "lora_rank" in sources and lora_rank != ck["lora_config"]["r"]:
        raise ConfigError(f"{sources['lora_rank']}: lora_rank={lora_rank}, but {path} trains adapters of rank "
                          f"{ck['lora_config']['r']}; drop the setting or start a new run in another out_dir")
    if args["block_size"] != block_size and master:
        print(f"resume: block_size {args['block_size']} from the checkpoint (config said {block_size})")
    return ck



# ----------------------------- data: the mixture's tasks, their windows, the batch sampler

def fmt_tokens(n):
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


class SplitWindows:
    """One split of one task: its window starts and how to cut rows (x, y) from them."""

    def __init__(self, split_data, block_size, packing):
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
        x, y = inputs_targets(toks, msk)
        y[x == self.eot] = -1  # never predict the next document from the end of this one
        if not self.packing:
            y[max(0, int(self.doc_end[k]) - s - 1):] = -1
        return x, y


def draw(d, rng):
    """A random row of d with at least one target (redrawn otherwise: never an all-masked batch)."""
    for _ in range(100):
        x, y = d.row(int(rng.integers(len(d.starts))))
        if (y != -1).any():
            return x, y
    raise RuntimeError(f"task {d.s.task!r} {d.s.split}: 100 random windows had no trained token; check its loss mask")


def open_tasks(data_dir, tasks, block_size):
    """Check the mixture and open every task's splits; clear errors before any compute."""
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
        if t not in TASK_NAMES and not os.path.isdir(os.path.join(data_dir, t)):
            raise ConfigError(f"unknown task {t!r}: not one of {', '.join(TASK_NAMES)} and no directory "
                              f"{os.path.join(data_dir, t)!r}")
    data = {}
    for t in active:
        for attempt in range(2):  # one read of .current for both splits; again if a re-prepare's cleanup won the race
            files = prepared_dir(os.path.join(data_dir, t))
            try:
                splits = {s: TaskSplit(data_dir, t, s, files) for s in ("train", "val")}
                break
            except FileNotFoundError as e:
                if attempt or files == os.path.join(data_dir, t):
                    raise ConfigError(f"missing dataset: {e}") from None
        if len(splits["train"]) < block_size + 1:
            raise ConfigError(f"block_size {block_size} is larger than task {t!r}'s whole train split "
                              f"({len(splits['train'])} tokens in {data_dir}/{t}); lower block_size or add data")
        data[t] = {s: SplitWindows(d, block_size, packing) for s, d in splits.items()}
        for s, d in data[t].items():
            if d.n_trained == 0:
                raise ConfigError(f"task {t!r} {s} split has no trained token (its loss mask is all 0)")
    return data, active


def count_iters(train_data, tokens_per_iter, sources, master):
    """max_iters, or with epochs > 0 the iterations for that many passes over the train tokens.
    Both set: the one set last wins (--max_iters=4 after a config's epochs), said out loud."""
    if epochs <= 0:
        return max_iters
    if "max_iters" in sources:
        if sources["max_iters"] == sources.get("epochs"):
            raise ConfigError(f"{sources['epochs']}: sets both epochs ({epochs}) and max_iters ({max_iters}); "
                              f"set one of them")
        order = list(sources)
        if "epochs" not in sources or order.index("max_iters") > order.index("epochs"):
            if master:
                print(f"max_iters={max_iters} ({sources['max_iters']}) wins over epochs={epochs} ({sources.get('epochs', 'default')})")
            return max_iters
        if master:
            print(f"epochs={epochs} ({sources.get('epochs')}) wins over max_iters={max_iters} ({sources['max_iters']})")
    total = sum(len(d.s) for d in train_data.values())
    n = max(1, math.ceil(epochs * total / tokens_per_iter))
    if master:
        print(f"epochs={epochs}: max_iters = {n} ({fmt_tokens(total)} train tokens, "
              f"{fmt_tokens(tokens_per_iter)} per iteration)")
    return n


def check_out_dir():
    """out_dir exists and takes files: a read-only folder stops the run now, not at its first save."""
    probe = os.path.join(out_dir, f".write-test-{os.getpid()}")
    try:
        os.makedirs(out_dir, exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"out_dir {out_dir!r} is not writable ({e.strerror}); choose another --out_dir") from None


def lock_out_dir():
    """out_dir/train.lock holds the pid of the one run writing there; a lock left by a dead process
    is taken over. Returns the lock's path (main removes it at the end)."""
    path = os.path.join(out_dir, LOCK)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(open(path).read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and pid_alive(pid):
                raise ConfigError(f"out_dir {out_dir!r} is in use by another training run (pid {pid}, {path}); "
                                  f"wait for it, stop it, or choose another --out_dir") from None
            print(f"{path}: taking over the lock of pid {pid or '?'}, which is no longer running")
            os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return path
    raise ConfigError(f"{path}: could not take the lock (another run took it just now?)")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return True


def check_new_run():
    """A new run (scratch or pretrained) never silently replaces a trained run in out_dir."""
    path = os.path.join(out_dir, ckpt_lib.LATEST)
    if init_from != "resume" and os.path.isfile(path) and not overwrite:
        raise ConfigError(f"out_dir {out_dir!r} already holds a trained run ({path}); continue it with "
                          f"--init_from=resume, replace it with --overwrite=True, or choose another --out_dir")


def remove_stale_temps():
    """Temporary files and folders (<name>.tmp-<pid>, files.temp_name) of saves killed mid-write:
    removed when that pid is gone (a live one may be another tool writing)."""
    for name in sorted(os.listdir(out_dir)):
        m = re.search(r"\.[a-z]+-(\d+)$", name)
        if not m or pid_alive(int(m.group(1))):
            continue
        path = os.path.join(out_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        print(f"removed {path}: left by a save that was killed (pid {m.group(1)} is gone)")


def start_log(ck):
    """log.jsonl is one run: a new run moves an earlier run's log to log.<n>.jsonl; a resume drops
    what an earlier attempt logged after the checkpoint (those steps run again), atomically."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.isfile(path):
        return
    if ck is None:
        n = 1
        while os.path.exists(os.path.join(out_dir, f"log.{n}.jsonl")):
            n += 1
        os.replace(path, os.path.join(out_dir, f"log.{n}.jsonl"))
        print(f"{path}: the previous run's log moved to log.{n}.jsonl")
        return
    train_recs, eval_recs = read_log(out_dir)
    resumed, evaluated = ck["iter_num"], ck.get("last_eval_iter") == ck["iter_num"]
    keep = [(r["iter"], 1, r) for r in train_recs if r["iter"] < resumed]
    keep += [(r["iter"], 0, r) for r in eval_recs if r["iter"] < resumed or (r["iter"] == resumed and evaluated)]
    keep = [json.dumps(r) + "\n" for _, _, r in sorted(keep, key=lambda k: k[:2])]  # an eval precedes its step
    write_text_atomic(path, "".join(keep))


def release_lock():
    """Remove out_dir's lock if this process holds it."""
    path = os.path.join(out_dir, LOCK)
    try:
        if int(open(path).read().strip() or 0) == os.getpid():
            os.remove(path)
    except (OSError, ValueError):
        pass


def data_fingerprint(data):
    """{task: id of its prepared set}: a hash of meta.json (written once per preparation) and the
    splits' document offsets, so a re-prepared or edited task reads as changed."""
    out = {}
    for t, d in data.items():
        h = hashlib.sha256(json.dumps(d["train"].s.meta, sort_keys=True).encode())
        for split in ("train", "val"):  # document offsets: small, and they change with the documents
            h.update(np.ascontiguousarray(d[split].s.docs).tobytes())
        out[t] = h.hexdigest()[:16]
    return out


def check_data_fingerprint(ck, fingerprint):
    """A resume reads the same prepared data its checkpoint trained on, unless data_changed_ok."""
    old = ck.get("data_fingerprint")
    if old is None:  # a checkpoint from before fingerprints: nothing to compare
        return
    changed = sorted(t for t in fingerprint if t in old and old[t] != fingerprint[t])
    added, dropped = sorted(set(fingerprint) - set(old)), sorted(set(old) - set(fingerprint))
    if not (changed or added or dropped):
        return
    kinds = (("re-prepared since the checkpoint", changed), ("new tasks", added), ("tasks gone", dropped))
    what = "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds if v)
    if not data_changed_ok:
        raise ConfigError(f"init_from=resume: the data in {data_dir!r} differ from what {out_dir}/{ckpt_lib.LATEST} "
                          f"trained on ({what}); the sampler position would mean other documents. Resume anyway "
                          f"with --data_changed_ok=True, or start a new run in another out_dir")
    print(f"resume: data changed ({what}); continuing as data_changed_ok=True")


class Sampler:
    """Random rows from the task mixture; its state (RNG, per-task counts) is in checkpoints."""

    def __init__(self, data, mixture, block_size, seed):
        self.names = list(data)
        self.data = data
        w = np.array([mixture[n] for n in self.names], dtype=np.float64)
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



# ----------------------------- model: scratch, pretrained, LoRA or resumed; what it needs in memory

def set_dropout(model, p):
    model.config.dropout = p
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if isinstance(m, CausalSelfAttention):
            m.dropout = p


def build_model(ck, run_block_size, master):
    """(model, lora_config, lora_base, base_sha256): from scratch, a pretrained model, or the
    checkpoint to resume; wrapped with LoRA adapters when the run trains adapters (lora_config None
    otherwise; base_sha256 is the adapted base's weights_sha256, checked on resume)."""
    lora_base = base_sha256 = None
    if ck is not None:
        if "lora" in ck:
            lora_base, base_sha256 = lora_lib.resolve_base(ck["lora_base"], out_dir), ck.get("lora_base_sha256")
            try:
                model = ckpt_lib.load_base(lora_base, ck["model_args"], os.path.join(out_dir, ckpt_lib.LATEST),
                                           base_sha256)
            except (FileNotFoundError, ValueError) as e:  # the base gone, or trained further since
                raise ConfigError(str(e)) from None
        else:
            model = ckpt_lib.model_from_checkpoint(ck)
    elif init_from == "scratch":
        model = GPT(GPTConfig(block_size=run_block_size, n_layer=n_layer, n_head=n_head,
                              n_embd=n_embd, dropout=dropout, bias=bias))
        with torch.no_grad():  # the same draw, scaled: every other weight as at embedding_init_std=0.02
            model.transformer.wte.weight.mul_(embedding_init_std / 0.02)
    else:
        try:
            model, source = ckpt_lib.load_model(init_from, out_dir, "cpu", which="best")
        except (ValueError, FileNotFoundError, RuntimeError) as e:  # unknown name, no such file, not a checkpoint
            raise ConfigError(f"init_from={init_from!r}: {e}") from None
        lora_base = os.path.abspath(source) if os.path.exists(source) else source
        had = model.config.block_size
        if master:
            grown = run_block_size > had
            print(f"init from {source}" + ("" if had == run_block_size else
                  f": context {'grown' if grown else 'cropped'} from {had} to block_size {run_block_size} positions"
                  + (" (new positions interpolated: give it training)" if grown else "")))
        model.resize_block_size(run_block_size)
    set_dropout(model, ck["model_args"].get("dropout", dropout) if ck is not None else dropout)
    model.config.gradient_checkpointing = gradient_checkpointing
    if ck is not None and "lora" in ck:
        lora_config = ck["lora_config"]
    elif lora_rank:
        lora_config = {"r": lora_rank, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
                       "target_modules": list(lora_targets)}
    else:
        return model, None, lora_base, None
    base_sha256 = base_sha256 or ckpt_lib.weights_sha256(model)  # before the adapters change its modules
    peft_model = lora_lib.wrap(model, lora_config["r"], lora_config["lora_alpha"], lora_config["lora_dropout"],
                               lora_config["target_modules"])
    if ck is not None:
        lora_lib.load_adapter_state(peft_model, ck["lora"])
    return peft_model, lora_config, lora_base, base_sha256


def limit_embeddings(gpt, train_data, master):
    """train_embeddings: 'none' freezes the tied embedding/output matrix; 'seen' trains only the rows of
    tokens that occur in the training data. Through the output softmax every other row gets a tiny
    gradient in one shared direction, which AdamW turns into a full learning-rate step: a few hundred
    steps put the never-seen tokens on one vector, and a new noun in a prompt can no longer be told
    apart, so not copied (docs/pipeline.md)."""
    wte = gpt.transformer.wte.weight
    if train_embeddings == "none":
        wte.requires_grad_(False)
    elif train_embeddings == "seen":
        seen = np.zeros(wte.shape[0], dtype=bool)
        for d in train_data.values():
            seen[np.unique(np.asarray(d.s.tokens))] = True
        keep = torch.from_numpy(seen).to(wte.device, wte.dtype).unsqueeze(1)
        wte.register_hook(lambda g: g * keep)
        if master:
            print(f"token embeddings: {int(seen.sum()):,} of {len(seen):,} rows trained, the tokens in the "
                  f"training data (train_embeddings='seen')")


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


def report_model(run, n_params, n_trainable, device_type):
    """Parameter counts, a memory estimate against what the device has, device and dtype."""
    n_total = sum(p.numel() for p in run.raw_model.parameters())
    lcfg = run.lora_config
    print(f"model: {n_total / 1e6:.2f}M parameters ({n_trainable / 1e6:.3f}M trained"
          + (f", LoRA r={lcfg['r']} on {lcfg['target_modules']}" if lcfg else "") + f"), block_size {run.block_size}")
    mem = memory_estimate(n_params, n_trainable, run.gpt.config, batch_size, run.ptdtype, gradient_checkpointing)
    have = device_memory(device_type)
    gib = lambda x: f"{x / 2**30:.2f}"
    print(f"memory estimate (GiB): weights {gib(mem['weights'])}, grads {gib(mem['grads'])}, optimizer "
          f"{gib(mem['optimizer'])}, activations {gib(mem['activations'])} = {gib(mem['total'])} of {gib(have)} "
          f"{'on ' + device_name(run.dev) if device_type == 'cuda' else 'RAM available'}")
    if mem["total"] > 0.9 * have:
        print(f"WARNING: this will likely not fit ({gib(mem['total'])} GiB needed, {gib(have)} GiB available): "
              f"lower batch_size (raise gradient_accumulation_steps to keep the batch), set "
              f"gradient_checkpointing=True, lower block_size, or use LoRA (lora_rank=8)")



# ----------------------------- optimizer and training state; restoring them on resume

class Run:
    """What the training loop reads and changes: model, optimizer, sampler, counters, processes."""

    def __init__(self, **kw):
        self.iter_num, self.best_val_loss, self.best_iter, self.last_eval_iter, self.tokens_seen = 0, 1e9, -1, -1, 0
        self.__dict__.update(kw)


def check_disk(sizes):
    """Say what each save writes; refuse to start where the first ckpt.pt and best.pt (each written
    beside the old one, then renamed over it) would not fit, rather than fail hours in."""
    need = sizes["resumable"] + sizes["best"]
    free = shutil.disk_usage(out_dir).free
    mb = lambda b: f"{b / 1e6:,.1f} MB"
    print(f"saves: {ckpt_lib.LATEST} {mb(sizes['resumable'])} (resumable: model, optimizer, RNG, data position), "
          f"{ckpt_lib.BEST} {mb(sizes['best'])} (weights only); {mb(free)} free in {out_dir}")
    if free < need:
        raise ConfigError(f"out_dir {out_dir!r} has {mb(free)} free, but a {ckpt_lib.LATEST} and a {ckpt_lib.BEST} "
                          f"need {mb(need)}; free space there or choose another --out_dir")


def restore_state(run, ck):
    """Optimizer, scaler, counters, sampler and every RNG from the checkpoint: exact resume."""
    run.optimizer.load_state_dict(ck["optimizer"])
    if "scaler" in ck and run.scaler.is_enabled():
        run.scaler.load_state_dict(ck["scaler"])
    run.iter_num, run.best_val_loss, run.best_iter = ck["iter_num"], ck["best_val_loss"], ck.get("best_iter", -1)
    run.last_eval_iter, run.tokens_seen = ck.get("last_eval_iter", -1), ck.get("tokens_seen", 0)
    best_path = os.path.join(out_dir, ckpt_lib.BEST)  # written alone under a save_interval_min clock
    best_there = ckpt_lib.peek_iter(best_path, "best_val_loss") if os.path.isfile(best_path) else None
    if best_there is not None and best_there < run.best_val_loss:
        run.best_val_loss, run.best_iter = best_there, ckpt_lib.peek_iter(best_path)
    run.sampler.load_state(ck["sampler"])
    torch.set_rng_state(ck["rng"]["torch"])
    if run.rank:  # other ranks: their own dropout stream, still a function of the step
        torch.manual_seed(seed + run.rank + 1000 * run.iter_num)
    if run.dev.startswith("cuda") and ck["rng"].get("cuda"):
        torch.cuda.set_rng_state(ck["rng"]["cuda"][0])
    npst = ck["rng"]["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    py = ck["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if run.master:
        print(f"resumed from {out_dir}/{ckpt_lib.LATEST} at iter {run.iter_num} (best val {run.best_val_loss:.4f})")


def repair_saves(run, ck):
    """Finish what a kill interrupted in save(): ckpt.pt is written first, so it may say it is the
    best while best.pt (or the adapter folders) still hold an older state. The run now holds
    exactly ck's state, so save() writes them again."""
    best_path = os.path.join(out_dir, ckpt_lib.BEST)
    was_best = ck.get("best_iter", -1) == ck["iter_num"]
    there = ckpt_lib.peek_iter(best_path) if os.path.isfile(best_path) else None
    stale = was_best and (there is None or there < ck["iter_num"])  # a newer one was saved alone later: keep it
    if stale or run.lora_config:  # adapter folders are small: rewrite them rather than compare
        save(run, best=was_best)
    if stale:
        print(f"resume: {best_path} was older than the best state in {ckpt_lib.LATEST} (iter {ck['iter_num']}): rewritten")


def prepare_run(config, sources):
    """Every set-up step in order: checks, processes, checkpoint, data, model, optimizer, state."""
    check_settings()
    ddp, rank, local_rank, world, dev = setup_distributed()
    master, device_type = rank == 0, torch.device(dev).type
    try:
        ptdtype = pick_dtype(dtype, dev, training=True)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ck = load_resume_checkpoint(sources, master) if init_from == "resume" else None
    # on resume the checkpoint decides the shape, whatever block_size says
    run_block_size = ck["model_args"]["block_size"] if ck is not None else block_size
    data, mixture = open_tasks(data_dir, tasks, run_block_size)  # all data errors before any compute
    fingerprint = data_fingerprint(data)
    if ck is not None:
        check_data_fingerprint(ck, fingerprint)
    train_data = {t: d["train"] for t, d in data.items()}
    tokens_per_iter = batch_size * run_block_size * gradient_accumulation_steps
    n_iters = count_iters(train_data, tokens_per_iter, sources, master)
    if decay_lr and warmup_iters >= n_iters and master:
        print(f"WARNING: warmup_iters ({warmup_iters}) >= max_iters ({n_iters}): the run never leaves warmup "
              f"and never reaches learning_rate {learning_rate}; lower warmup_iters")
    use_compile = compile if compile is not None else compile_by_default(device_type, n_iters)
    if compile is None and use_compile and device_type == "cpu" and master:  # a long first step: say why
        print(f"compile: on, as max_iters {n_iters} >= {CPU_COMPILE_MIN_ITERS} repays torch.compile's warm-up on CPU "
              "(tens of seconds before the first step); --compile=False to skip")
    if master:
        check_out_dir()
        lock_out_dir()
        check_new_run()
        remove_stale_temps()
        start_log(ck)
        total_weight = sum(mixture.values())
        print("tasks: " + ", ".join(f"{t} {w / total_weight:.2f} ({fmt_tokens(len(train_data[t].s))} train, "
                                    f"{fmt_tokens(len(data[t]['val'].s))} val)" for t, w in mixture.items()))
        print(f"tokens per iteration: {tokens_per_iter:,} = {batch_size} rows x {run_block_size} x "
              f"{gradient_accumulation_steps} accumulation ({world} process{'es' if world > 1 else ''})")
    torch.manual_seed(seed + rank)
    random.seed(seed)
    sampler = Sampler(train_data, mixture, run_block_size, seed)

    model, lora_config, lora_base, base_sha256 = build_model(ck, run_block_size, master)
    gpt = model.get_base_model() if lora_config else model  # the plain GPT (modules shared with the wrapper)
    model_args, n_params = asdict(gpt.config), gpt.get_num_params()
    model.train()
    model.to(dev)
    if not lora_config:
        limit_embeddings(gpt, train_data, master)
    run = Run(config=config, ddp=ddp, rank=rank, world=world, master=master, dev=dev, ptdtype=ptdtype,
              accum_local=gradient_accumulation_steps // world, block_size=run_block_size, max_iters=n_iters,
              tokens_per_iter=tokens_per_iter, sampler=sampler, raw_model=model, gpt=gpt, model_args=model_args,
              n_params=n_params, lora_config=lora_config, lora_base=lora_base,
              lora_base_sha256=base_sha256, autocast_ctx=autocast(dev, ptdtype),
              peak_flops=peak_flops(dev), data_fingerprint=fingerprint)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if master:
        report_model(run, n_params, n_trainable, device_type)
        print(f"device {device_name(dev)}, dtype {ptdtype}, compile {use_compile}")
    run.scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == "float16" and device_type == "cuda"))
    run.optimizer = gpt.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
    run.save_sizes = ckpt_lib.save_sizes(model, ptdtype, lora=bool(lora_config))
    if master:
        check_disk(run.save_sizes)
    if ck is not None:
        restore_state(run, ck)
        if master:
            repair_saves(run, ck)
    run.saved_iter = run.iter_num if ck is not None else -1
    run.saved_time = time.time()  # the save_interval_min clock starts now
    del ck
    run.model = run.eval_model = torch.compile(model) if use_compile else model  # eval: compiled, never DDP
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        run.model = DDP(run.model, device_ids=[local_rank] if device_type == "cuda" else None)
    # fixed evaluation batches; each process evaluates every world-th batch, sums are all-reduced
    run.task_names = list(mixture)
    run.task_probs = {t: w / sum(mixture.values()) for t, w in mixture.items()}
    run.eval_batches = {(t, s): [b for i, b in enumerate(eval_batches(data[t][s], eval_iters, batch_size, seed, ti, si))
                                 if i % world == rank]
                        for ti, t in enumerate(run.task_names) for si, s in enumerate(("train", "val"))}
    return run



# ----------------------------- the loop's steps, each just above its first use

def get_lr(it, n_iters):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters (default: the run's end)."""
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    end = lr_decay_iters or n_iters
    if it >= end:
        return min_lr
    ratio = (it - warmup_iters) / max(1, end - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@torch.no_grad()
def estimate_loss(run):
    """{'train'|'val': {task: loss, 'all': mixture loss}} on the fixed batches, summed over processes."""
    run.model.eval()
    sums = torch.zeros(len(run.task_names), 2, 2, dtype=torch.float64)
    for ti, t in enumerate(run.task_names):
        for si, s in enumerate(("train", "val")):
            for X, Y in run.eval_batches[(t, s)]:
                with run.autocast_ctx:
                    _, loss = run.eval_model(X.to(run.dev), Y.to(run.dev), reduction="sum")
                sums[ti, si, 0] += loss.item()
                sums[ti, si, 1] += (Y != -1).sum().item()
    if run.ddp:
        dist.all_reduce(sums)
    run.model.train()
    out = {}
    for si, s in enumerate(("train", "val")):
        per = {t: (sums[ti, si, 0] / sums[ti, si, 1]).item() for ti, t in enumerate(run.task_names)}
        per["all"] = sum(run.task_probs[t] * per[t] for t in run.task_names)  # the mixture's expected loss
        out[s] = per
    return out


class Diverged(RuntimeError):
    """The loss went to inf/NaN: the run stops with one line (exit 1); the last ckpt.pt stays as it was."""


def train_step(run):
    """One optimizer step over the global batch; returns its mean loss per target. Every process
    draws the same global batch (same sampler state) and takes its own micro-batches: DDP == one process."""
    X, Y = run.sampler.batch(batch_size * gradient_accumulation_steps)
    n_targets = int((Y != -1).sum())  # > 0: the sampler never returns a row without targets
    loss_sum = torch.zeros((), dtype=torch.float64)
    for micro in range(run.accum_local):
        k = (micro * run.world + run.rank) * batch_size
        x = X[k:k + batch_size].to(run.dev, non_blocking=True)
        y = Y[k:k + batch_size].to(run.dev, non_blocking=True)
        if run.ddp:
            run.model.require_backward_grad_sync = micro == run.accum_local - 1
        with run.autocast_ctx:
            _, loss = run.model(x, y, reduction="sum")
        loss_sum += loss.detach().double().cpu()
        # gradient of the mean over all targets of the global batch (DDP averages over processes)
        run.scaler.scale(loss * (run.world / n_targets)).backward()
    if run.ddp:
        dist.all_reduce(loss_sum)
    lossf = loss_sum.item() / n_targets
    if not math.isfinite(lossf) and not run.scaler.is_enabled():  # fp16's scaler skips such steps itself
        hint = "lower learning_rate" + ("" if run.ptdtype == "float32" else " or use dtype=float32")
        kept = f"; {ckpt_lib.LATEST} from iter {run.saved_iter} is kept" if run.saved_iter >= 0 else ""
        raise Diverged(f"iter {run.iter_num}: loss is {lossf}; {hint}{kept}")
    if grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.tokens_seen += run.tokens_per_iter
    return lossf


def numpy_state():
    """np.random's global state as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def checkpoint_state(run):
    """Everything a resume needs, as tensors and plain values (loads with weights_only=True)."""
    py = random.getstate()
    st = {"model_args": run.model_args, "iter_num": run.iter_num, "best_val_loss": run.best_val_loss,
          "best_iter": run.best_iter,
          "last_eval_iter": run.last_eval_iter, "tokens_seen": run.tokens_seen, "config": run.config,
          "data_fingerprint": run.data_fingerprint,
          "optimizer": run.optimizer.state_dict(), "sampler": run.sampler.state(),
          "rng": {"torch": torch.get_rng_state(), "numpy": numpy_state(), "python": [py[0], list(py[1]), py[2]],
                  "cuda": list(torch.cuda.get_rng_state_all()) if run.dev.startswith("cuda") else []}}
    if run.scaler.is_enabled():
        st["scaler"] = run.scaler.state_dict()
    if run.lora_config:
        st.update(lora=lora_lib.adapter_state(run.raw_model), lora_config=run.lora_config,
                  lora_base=lora_lib.portable_base(run.lora_base, out_dir), lora_base_sha256=run.lora_base_sha256)
    else:
        st["model"] = ckpt_lib.clean_state_dict(run.raw_model.state_dict())
    return st


def best_state(run, st):
    """best.pt: what sample/serve/eval need: the weights (or adapter) in the training dtype; no
    optimizer, RNG or data position (resume reads ckpt.pt). fp16/bf16 halve it again."""
    plain = ("model_args", "iter_num", "best_val_loss", "config", "lora_config", "lora_base", "lora_base_sha256")
    keep = {k: st[k] for k in plain if k in st}
    save_dtype = getattr(torch, run.ptdtype)
    for k in ("model", "lora"):
        if k in st:
            keep[k] = {n: v.to(save_dtype) if v.is_floating_point() else v for n, v in st[k].items()}
    return keep


def save(run, best=False, latest=True):
    """The one writer of a run's saves: ckpt.pt (resumable) and the LoRA adapter lora/; with best,
    also best.pt (weights only) and lora_best/. Each file is written beside the old one and renamed
    over it (files.atomic_file): on Drive's FUSE mount that replaces in place, no Trash fills up.
    ckpt.pt goes first and records best_iter: a kill before best.pt is repaired on resume."""
    if best:
        run.best_iter = run.iter_num
    st = checkpoint_state(run)
    if latest:
        ckpt_lib.save_checkpoint(os.path.join(out_dir, ckpt_lib.LATEST), st)
        if run.lora_config:
            lora_lib.save_adapter(run.raw_model, os.path.join(out_dir, "lora"), run.lora_base, run.model_args,
                                  run.lora_base_sha256)
        run.saved_iter, run.saved_time = run.iter_num, time.time()
    if best:
        ckpt_lib.save_checkpoint(os.path.join(out_dir, ckpt_lib.BEST), best_state(run, st))
        if run.lora_config:
            lora_lib.save_adapter(run.raw_model, os.path.join(out_dir, "lora_best"), run.lora_base, run.model_args,
                                  run.lora_base_sha256)


def log_json(rec):
    with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")


def evaluate_and_save(run):
    """Per-task losses; on the master: print, log, and save ckpt.pt (best.pt when val improved)."""
    losses = estimate_loss(run)
    run.last_eval_iter = run.iter_num
    if not run.master:
        return losses
    it = run.iter_num
    print(f"eval {it}: val " + ", ".join(f"{t} {v:.4f}" for t, v in losses["val"].items())
          + f" | train all {losses['train']['all']:.4f}")
    log_json({"type": "eval", "iter": it, "val": losses["val"], "train": losses["train"], "tokens": run.tokens_seen})
    if wandb_log:
        import wandb
        wandb.log({"iter": it, **{f"val/{t}": v for t, v in losses["val"].items()},
                   **{f"train/{t}": v for t, v in losses["train"].items()}})
    improved = losses["val"]["all"] < run.best_val_loss and it > 0
    if improved:
        run.best_val_loss = losses["val"]["all"]
    # with a save_interval_min clock, an improvement writes best.pt alone (ckpt.pt is 6x its size)
    latest = always_save_checkpoint or (improved and not save_interval_min)
    if it > 0 and (latest or improved):
        save(run, best=improved, latest=latest)
        print(f"saved {out_dir}/" + " and ".join(([ckpt_lib.LATEST] if latest else [])
                                                 + ([ckpt_lib.BEST] if improved else [])))
    return losses


def log_step(run, lossf, lr, seconds):
    """One line and one log.jsonl record: loss, speed (MFU where the peak is known), epochs, tokens."""
    tok_s = run.tokens_per_iter / seconds
    mfu, achieved = run.gpt.estimate_mfu(batch_size * run.accum_local, seconds, run.peak_flops)  # per process
    eps = run.sampler.epochs()
    chinchilla = run.tokens_seen / (20 * run.n_params)  # 20 tokens per parameter
    speed = f"mfu {mfu * 100:.1f}%" if mfu is not None else f"{achieved / 1e12:.3f} TFLOP/s"
    print(f"iter {run.iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {seconds * 1000:.0f}ms, {tok_s:,.0f} tok/s, {speed}, "
          f"epochs " + " ".join(f"{t} {e:.2f}" for t, e in eps.items())
          + f", tokens {fmt_tokens(run.tokens_seen)} = {chinchilla:.2g}x chinchilla (20 tok/param)")
    rec = {"type": "train", "iter": run.iter_num, "loss": lossf, "lr": lr, "ms": seconds * 1000, "tok_per_s": tok_s,
           "tokens": run.tokens_seen, "mfu": mfu, "flops_per_s": achieved, "epochs": eps, "chinchilla": chinchilla}
    log_json(rec)
    if wandb_log:
        import wandb
        wandb.log({k: v for k, v in rec.items() if k not in ("type", "epochs")})


class StopSignal:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves and exits."""

    def __init__(self):
        self.signum = 0
        self.old = [signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)]

    def handler(self, signum, frame):
        self.signum = signum

    def restore(self):
        signal.signal(signal.SIGINT, self.old[0])
        signal.signal(signal.SIGTERM, self.old[1])


def stop_and_exit(run, signum):
    """Save where we are, plot, and exit 128 + signal number (any process may have been signalled)."""
    if run.master:
        save(run)
        print(f"{signal.Signals(signum).name}: saved {out_dir}/{ckpt_lib.LATEST} at iter {run.iter_num}; "
              f"resume with --init_from=resume")
        if plot:
            plot_losses(out_dir)
    if run.ddp:
        dist.destroy_process_group()
    sys.exit(128 + signum)


def train_loop(run, stop):
    """Evaluate every eval_interval iterations and at the end, step, log; returns the last loss."""
    evals, lossf = {}, None
    t0 = time.time()
    while True:
        signum = torch.tensor([stop.signum])
        if run.ddp:
            dist.all_reduce(signum, op=dist.ReduceOp.MAX)
        if int(signum):
            stop_and_exit(run, int(signum))
        lr = get_lr(run.iter_num, run.max_iters)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        due = run.iter_num % eval_interval == 0 or run.iter_num == run.max_iters
        if due and run.iter_num != run.last_eval_iter:
            evals[run.iter_num] = evaluate_and_save(run)
            t0 = time.time()  # the step's time excludes the evaluation
        if eval_only or run.iter_num >= run.max_iters:
            return lossf, evals
        lossf = train_step(run)
        t1 = time.time()
        seconds, t0 = t1 - t0, t1
        if run.iter_num % log_interval == 0 and run.master:
            log_step(run, lossf, lr, seconds)
        run.iter_num += 1
        if save_interval_min and run.master and time.time() - run.saved_time >= save_interval_min * 60:
            save(run)  # the resumable state on a clock: a preempted Colab loses at most this much
            print(f"saved {out_dir}/{ckpt_lib.LATEST} at iter {run.iter_num} "
                  f"({save_interval_min:g} min since the last)")
            t0 = time.time()



# ----------------------------- main

def main(argv=None):
    """Train; argv as sys.argv[1:] (tests call main in-process). Returns a summary dict."""
    sources = {}  # which settings a config file or an argument set, in order
    config = configure(globals(), argv, sources=sources)
    new_dir = not os.path.exists(out_dir)
    try:
        return train(config, sources)
    except BaseException:  # a run that failed before writing anything leaves no empty out_dir behind
        release_lock()
        if new_dir and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)
        raise
    finally:
        release_lock()


def train(config, sources):
    run = prepare_run(config, sources)
    if wandb_log and run.master:
        import wandb
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)
    stop = StopSignal()
    lossf, evals = train_loop(run, stop)
    if run.master and not eval_only and run.saved_iter != run.iter_num:
        save(run)
    if run.master and plot and not eval_only:
        for path in plot_losses(out_dir):
            print(f"wrote {path}")
    if wandb_log and run.master:
        import wandb
        wandb.finish()
    stop.restore()
    if run.ddp:
        dist.destroy_process_group()
    return {"iter_num": run.iter_num, "loss": lossf, "best_val_loss": run.best_val_loss, "evals": evals}


if __name__ == "__main__":
    # a full disk (the previous checkpoint is still there) or a diverged loss: one line, exit 1
    run_main(main, sys.argv[1:], errors=((WriteError, 1), (Diverged, 1)))
