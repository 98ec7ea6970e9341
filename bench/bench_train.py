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

compile=True times four sides, alternating: each model eager and under torch.compile. Besides the
eager and compiled pairs it prints the warm-up (the first compiled step: compilation) and the
default path over a number of steps, warm-up included: train.py compiles on CPU from
device.CPU_COMPILE_MIN_ITERS iterations, so a run that long pays the warm-up once.
Limits: a 2048 x 2048 matmul in fp32 and bf16 is timed between the steps (the same minute's load),
and each row's training FLOP/s (6N + attention per token, as model.flops_per_token) is printed
beside the peak of its precision.
"""
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure  # noqa: E402
from nanophi.device import autocast, cpu_has_bf16, device_name, measure_matmul_flops  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from nanophi.tokenizer import VOCAB_SIZE  # noqa: E402

preset = "small"  # small: 6 x 384 (quick); gpt2: 12 x 768 (124M)
batch_size = 4
block_size = 256
steps = 4  # measured steps per model and mode (after one warm-up step)
modes = ["fp32-fwdbwd", "fp32-step", "bf16-step"]
batches = ["text", "chat"]
threads = 0  # 0 = torch's default
compile = False  # also time both models under torch.compile (slow to compile on 2 cores)
horizons = [500, 1000, 5000]  # with compile: the default path's ratio over this many steps, warm-up included
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


def make_step(side, mode, compiled):
    model, opt, loss_fn = side
    model.train()
    fn = torch.compile(loss_fn) if compiled else loss_fn
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
    flops_per_token = sides["model.py"][0].flops_per_token(block_size)
    print(f"machine: {device_name('cpu')}, torch {torch.__version__}, bf16 CPU: {cpu_has_bf16()}")
    print(f"shape: {shape['n_layer']} layers x {shape['n_embd']} ({n_params / 1e6:.1f}M params), "
          f"batch {batch_size} x {block_size}, {steps} steps per model and mode, alternating")
    peak = {"fp32": 0.0, "bf16": 0.0}
    rows, warmups = [], {}
    for kind in batches:
        x, y, labels = make_batch(kind)
        share = (y != -1).float().mean().item()
        for mode in modes:
            if mode.startswith("bf16") and not cpu_has_bf16():
                print(f"{mode}: skipped (no native bf16 on this CPU)")
                continue
            variants = [("", False)] + ([(" compiled", True)] if compile else [])
            steps_fn = {name + tag: make_step(side, mode, c) for tag, c in variants for name, side in sides.items()}
            times = {name: [] for name in steps_fn}
            for i in range(steps + 1):
                for prec in ("fp32", "bf16") if cpu_has_bf16() else ("fp32",):
                    peak[prec] = max(peak[prec], measure_matmul_flops("float32" if prec == "fp32" else "bfloat16", repeats=1))
                for name, fn in steps_fn.items():
                    t = time.perf_counter()
                    fn(x, y) if name.startswith("model.py") else fn(x, labels)
                    if i:  # the first step warms up (allocations, compilation)
                        times[name].append(time.perf_counter() - t)
                    else:  # compilation is cached across batches and modes: keep the first (longest)
                        warmups[name] = max(warmups.get(name, 0.0), time.perf_counter() - t)
            tok = batch_size * block_size
            for tag, _ in variants:
                ours_s, theirs_s = statistics.median(times["model.py" + tag]), statistics.median(times["transformers" + tag])
                rows.append((f"{kind} ({share:.0%} targets)", mode + tag, tok / ours_s, tok / theirs_s, theirs_s / ours_s))
    print(f"\nthis machine's matmul peak (2048 x 2048, best of the runs between steps): fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s"
          + (f", bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s" if peak["bf16"] else ""))
    print(f"training FLOPs per token (6N + attention): {flops_per_token / 1e6:.0f} MFLOP\n")
    print("| batch | mode | model.py tok/s | transformers tok/s | ratio | model.py GFLOP/s (of matmul peak) |")
    print("|---|---|---:|---:|---:|---:|")
    for kind, mode, a, b, r in rows:
        p = peak["bf16" if mode.startswith("bf16") else "fp32"]
        print(f"| {kind} | {mode} | {a:,.0f} | {b:,.0f} | {r:.2f}x | {a * flops_per_token / 1e9:.0f} ({a * flops_per_token / p:.0%}) |")
    if compile:
        print_default_path(rows, warmups)


def print_default_path(rows, warmups):
    """Over N steps, warm-up included: model.py as train.py runs it by default (compiled from
    CPU_COMPILE_MIN_ITERS iterations, else eager) against transformers eager and compiled."""
    from nanophi.device import CPU_COMPILE_MIN_ITERS
    tok = batch_size * block_size
    print(f"\ndefault path over N steps, warm-up (the first step) included; train.py compiles on CPU from "
          f"{CPU_COMPILE_MIN_ITERS} iterations")
    print("| batch | mode | N | model.py default | s | transformers eager s | ratio | transformers compiled s | ratio |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    by = {(k, m): a for k, m, a, _, _ in rows}
    theirs = {(k, m): b for k, m, _, b, _ in rows}
    for kind, mode, _, _, _ in rows:
        if mode.endswith("compiled"):
            continue
        for n in horizons:
            compiled = n >= CPU_COMPILE_MIN_ITERS
            name = "model.py compiled" if compiled else "model.py"
            ours_s = warmups[name] + (n - 1) * tok / by[(kind, mode + (" compiled" if compiled else ""))]
            t_eager = warmups["transformers"] + (n - 1) * tok / theirs[(kind, mode)]
            t_comp = warmups["transformers compiled"] + (n - 1) * tok / theirs[(kind, mode + " compiled")]
            print(f"| {kind} | {mode} | {n} | {'compiled' if compiled else 'eager'} | {ours_s:.0f} | {t_eager:.0f} | "
                  f"{t_eager / ours_s:.2f}x | {t_comp:.0f} | {t_comp / ours_s:.2f}x |")
    print("warm-up (the first step of each side, s): " + ", ".join(f"{k} {v:.1f}" for k, v in warmups.items()))


if __name__ == "__main__":
    main()
