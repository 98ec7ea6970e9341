"""
Training throughput on CPU: model.py (as train.py runs it) vs transformers' GPT2LMHeadModel, same
shape and batch, side by side in one run. Steps alternate between the two models so that a busy
machine slows both alike; the median step time is reported.

    python bench/bench_train.py                         # 6 layers x 384, B4 x T256
    python bench/bench_train.py --preset=gpt2           # GPT-2 124M shape (slow on 2 cores)
    python bench/bench_train.py --steps=5 --modes="['fp32-step','bf16-step']"

Modes:
  fp32-fwdbwd  forward + backward only (the models themselves)
  fp32-step    a whole training step: forward, backward, clip, AdamW as each side uses it:
               train.py's configure_optimizers (fused AdamW, decay on >=2-dim tensors) vs
               torch.optim.AdamW's default implementation, which a transformers user gets
  bf16-step    the same step under bf16 autocast for both (CPUs with avx512_bf16/amx only)
Batches:
  text         every position is a target (textbooks, code)
  chat         the hand-written conversations (data/chat/handwritten.jsonl) packed into rows with
               their real loss mask: only the bot's replies are targets, as in SFT. Both sides get
               the same mask (transformers: labels -100); model.py projects to the vocabulary only
               where there is a target, transformers projects every position.
Both models have the same vocabulary (50257, GPT-2's, what finetuning from gpt2 uses), no dropout.
"""
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure  # noqa: E402
from nanophi.device import autocast, cpu_has_bf16, device_name  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from nanophi.tokenizer import VOCAB_SIZE  # noqa: E402

preset = "small"  # small: 6 x 384 (quick); gpt2: 12 x 768 (124M)
batch_size = 4
block_size = 256
steps = 4  # measured steps per model and mode (after one warm-up step)
modes = ["fp32-fwdbwd", "fp32-step", "bf16-step"]
batches = ["text", "chat"]
threads = 0  # 0 = torch's default
compile = False  # torch.compile both models (slow to compile on 2 cores)
configure(globals())

SHAPES = {"small": dict(n_layer=6, n_head=6, n_embd=384), "gpt2": dict(n_layer=12, n_head=12, n_embd=768)}
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
shape = SHAPES[preset]


def ours():
    model = GPT(GPTConfig(block_size=block_size, vocab_size=VOCAB_SIZE, dropout=0.0, bias=True, **shape))
    opt = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), "cpu")

    def loss_fn(x, y):
        return model(x, y)[1]
    return model, opt, loss_fn


def theirs():
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=block_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     activation_function="gelu_new", **shape)
    model = GPT2LMHeadModel(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95))

    def loss_fn(x, labels):
        return model(input_ids=x, labels=labels).loss  # transformers shifts the labels itself
    return model, opt, loss_fn


def make_step(side, mode):
    model, opt, loss_fn = side
    model.train()
    fn = torch.compile(loss_fn) if compile else loss_fn
    dtype = "bfloat16" if mode.startswith("bf16") else "float32"

    def step(x, y):
        with autocast("cpu", dtype):
            loss = fn(x, y)
        loss.backward()
        if mode.endswith("step"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def make_batch(kind):
    """(x, y) for model.py and (x, labels) for transformers: the same tokens and the same targets."""
    if kind == "text":
        data = torch.randint(0, VOCAB_SIZE, (batch_size, block_size + 1))
        mask = torch.ones_like(data)
    else:
        from nanophi import textformat
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        ids, mask = [], []
        for line in open(os.path.join(root, "data", "chat", "handwritten.jsonl")):
            rec = json.loads(line)
            i, m = textformat.encode_example(textformat.chat(rec["turns"], system=rec.get("system")))
            ids += i
            mask += m
        n = batch_size * (block_size + 1)
        data = torch.tensor(ids[:n]).view(batch_size, -1)
        mask = torch.tensor(mask[:n]).view(batch_size, -1)
    x, y = data[:, :-1], torch.where(mask[:, 1:] == 1, data[:, 1:], -1)
    labels = torch.where(mask[:, :-1] == 1, data[:, :-1], -100)  # transformers predicts T-1 of them
    return x, y, labels


def main():
    sides = {"model.py": ours(), "transformers": theirs()}
    n_params = sides["model.py"][0].get_num_params()
    print(f"machine: {device_name('cpu')}, torch {torch.__version__}, bf16 CPU: {cpu_has_bf16()}")
    print(f"shape: {shape['n_layer']} layers x {shape['n_embd']} ({n_params / 1e6:.1f}M params), "
          f"batch {batch_size} x {block_size}, {steps} steps per model and mode, alternating")
    rows = []
    for kind in batches:
        x, y, labels = make_batch(kind)
        share = (y != -1).float().mean().item()
        for mode in modes:
            if mode.startswith("bf16") and not cpu_has_bf16():
                print(f"{mode}: skipped (no native bf16 on this CPU)")
                continue
            steps_fn = {name: make_step(side, mode) for name, side in sides.items()}
            times = {name: [] for name in sides}
            for i in range(steps + 1):
                for name, fn in steps_fn.items():
                    t = time.perf_counter()
                    fn(x, y) if name == "model.py" else fn(x, labels)
                    if i:  # the first step warms up (allocations, compilation)
                        times[name].append(time.perf_counter() - t)
            tok = batch_size * block_size
            ours_s, theirs_s = statistics.median(times["model.py"]), statistics.median(times["transformers"])
            rows.append((f"{kind} ({share:.0%} targets)", mode, tok / ours_s, tok / theirs_s, theirs_s / ours_s))
    print()
    print("| batch | mode | model.py tok/s | transformers tok/s | ratio |")
    print("|---|---|---:|---:|---:|")
    for kind, mode, a, b, r in rows:
        print(f"| {kind} | {mode} | {a:,.0f} | {b:,.0f} | {r:.2f}x |")


if __name__ == "__main__":
    main()
