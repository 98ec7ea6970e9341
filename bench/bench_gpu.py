"""
The first GPU check: one command, synthetic tokens, random weights, torch + numpy only (transformers
optional, for parity and the side-by-side). Prints each figure and writes them all as JSON.

    python bench/bench_gpu.py                       # any CUDA GPU, under 8 minutes: gpt2-medium at 4 x 1024
    python bench/bench_gpu.py --tiny --out=g.json   # CPU, seconds: tiny shapes, fp32; CUDA-only parts noted

Sections: parity (model.py vs transformers logits, fp32/bf16/fp16), train (tok/s and MFU against the
matmul peak measured here, fp16 + GradScaler and bf16, eager and compiled, ours beside transformers),
memory (peak against train.py's memory_estimate, with and without gradient checkpointing, and at 4,096
context), decode (KV-cache tok/s at batch 1 and the engine's batched throughput).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import GPT, GPTConfig  # noqa: E402
from nanophi.device import device_name, measure_matmul_flops  # noqa: E402
from nanophi.engine import Engine, Row  # noqa: E402
from nanophi.tokenizer import VOCAB_SIZE  # noqa: E402
from train import memory_estimate  # noqa: E402  (the estimate train.py prints)

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--tiny", action="store_true", help="tiny shapes in fp32 on CPU: a check that runs in seconds")
p.add_argument("--out", default="bench_gpu.json", help="where the JSON goes")
p.add_argument("--steps", type=int, default=10, help="timed training steps per mode")
args = p.parse_args()

cuda = torch.cuda.is_available() and not args.tiny
device = "cuda" if cuda else "cpu"
if args.tiny:
    shape, batch, block, steps = dict(n_layer=2, n_head=2, n_embd=64), 2, 64, 2
else:  # gpt2-medium at config/finetune_nanophi.py's micro-batch
    shape, batch, block, steps = dict(n_layer=24, n_head=16, n_embd=1024), 4, 1024, args.steps
dtypes = ["float32", "bfloat16", "float16"] if cuda else ["float32"]
train_dtypes = ["float16", "bfloat16"] if cuda else ["float32"]
results = {"device": device_name(device), "tiny": args.tiny, "shape": {**shape, "batch": batch, "block": block},
           "notes": []}


def note(text):
    print(f"note: {text}")
    results["notes"].append(text)


def sync():
    if cuda:
        torch.cuda.synchronize()


try:
    from transformers import GPT2Config, GPT2LMHeadModel
except ImportError:
    GPT2LMHeadModel = None
    note("transformers not installed: no parity check and no side-by-side")


def make_ours(block_size, checkpointing=False):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=block_size, vocab_size=50304, gradient_checkpointing=checkpointing,
                         **shape)).to(device)


def make_hf(block_size):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_positions=block_size, vocab_size=VOCAB_SIZE, resid_pdrop=0,
                                      embd_pdrop=0, attn_pdrop=0, **shape)).to(device)


def tokens(b, t):
    return torch.from_numpy(np.random.default_rng(0).integers(0, VOCAB_SIZE, (b, t))).to(device)


# ----------------------------------------------------------------------------- parity
print(f"device: {results['device']}")
results["parity"] = {}
if GPT2LMHeadModel:
    hf = make_hf(block).eval()
    ours = make_ours(block).eval()
    ours.load_hf_state_dict(hf.state_dict())
    x = tokens(1, min(block, 256))
    for dt in dtypes:
        with torch.no_grad(), torch.autocast(device, dtype=getattr(torch, dt), enabled=dt != "float32"):
            a = ours(x)[0][..., :VOCAB_SIZE].float()
            b = hf(x).logits.float()
        diff = (a - b).abs().max().item()
        results["parity"][dt] = {"max_abs_logit_diff": diff}
        print(f"parity {dt}: max |logits ours - transformers| = {diff:.2e}")
    del hf, ours

# ----------------------------------------------------------------------------- training
peak = {dt: measure_matmul_flops(dt, n=256 if args.tiny else 8192, device=device) for dt in train_dtypes}
results["matmul_peak_flops"] = peak
results["train"] = []


def train_rate(model, dt, is_hf, T=block):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    scaler = torch.amp.GradScaler(device, enabled=dt == "float16")  # fp16 needs loss scaling; bf16 does not
    x, y = tokens(batch, T), tokens(batch, T)

    def step():
        with torch.autocast(device, dtype=getattr(torch, dt), enabled=dt != "float32"):
            loss = model(x, labels=y).loss if is_hf else model(x, y)[1]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    for _ in range(2):  # warm-up (and compilation)
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t) / steps


for dt in train_dtypes:
    for compiled in ([False, True] if cuda else [False]):
        for impl in (["ours", "transformers"] if GPT2LMHeadModel else ["ours"]):
            model = (make_hf(block) if impl == "transformers" else make_ours(block)).train()
            flops_model = make_ours(block) if impl == "transformers" else model
            fwd = torch.compile(model) if compiled else model
            sec = train_rate(fwd, dt, impl == "transformers")
            mfu, achieved = flops_model.estimate_mfu(batch, sec, peak[dt])
            row = {"impl": impl, "dtype": dt, "compiled": compiled, "tok_per_s": batch * block / sec,
                   "mfu_vs_measured_peak": mfu, "achieved_flops": achieved}
            results["train"].append(row)
            print(f"train {impl:12} {dt:8} {'compiled' if compiled else 'eager':8}: {row['tok_per_s']:9.0f} tok/s,"
                  f" MFU {mfu:.1%} of the measured {peak[dt] / 1e12:.1f} TFLOPS")
            del model, flops_model, fwd
if not cuda:
    note("training in fp16 + GradScaler, bf16 and compiled modes need CUDA: only eager fp32 ran")

# ----------------------------------------------------------------------------- memory
results["memory"] = []
mem_dt = "bfloat16" if cuda and torch.cuda.is_bf16_supported(including_emulation=False) else (
    "float16" if cuda else "float32")
for block_size, checkpointing in ((block, False), (block, True), (4 * block, False), (4 * block, True)):
    model = make_ours(block_size, checkpointing).train()
    n = sum(p.numel() for p in model.parameters())
    est = memory_estimate(n, n, model.config, batch, mem_dt, checkpointing)["total"]
    row = {"block": block_size, "gradient_checkpointing": checkpointing, "dtype": mem_dt, "estimate_bytes": est,
           "peak_bytes": None}
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            train_rate(model, mem_dt, False, T=block_size)
            row["peak_bytes"] = torch.cuda.max_memory_allocated()
        except torch.OutOfMemoryError:
            row["peak_bytes"] = "out of memory"
    results["memory"].append(row)
    peak_text = f"{row['peak_bytes'] / 2**30:.2f} GiB" if isinstance(row["peak_bytes"], int) else row["peak_bytes"]
    print(f"memory T={block_size} checkpointing={checkpointing}: estimate {est / 2**30:.2f} GiB, peak {peak_text}")
    del model
if not cuda:
    note("peak memory needs CUDA (torch.cuda.max_memory_allocated): estimates only")

# ----------------------------------------------------------------------------- decoding
model = make_ours(block).eval()
if cuda:
    model = model.to(torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16)
new = 16 if args.tiny else 128
prompt = tokens(1, 32)[0].tolist()
results["decode"] = {}
for rows in (1, 8):
    engine = Engine(model, max_batch=rows)
    list(engine.run([Row(prompt, 4, temperature=0, stop_ids=()) for _ in range(rows)]))  # warm-up
    sync()
    t = time.perf_counter()
    batch_rows = [Row(prompt, new, temperature=0, stop_ids=()) for _ in range(rows)]
    list(engine.run(batch_rows))
    sync()
    rate = sum(r.n_tokens for r in batch_rows) / (time.perf_counter() - t)
    results["decode"][f"batch_{rows}_tok_per_s"] = rate
    print(f"decode (engine, KV cache) batch {rows}: {rate:.1f} tok/s")

with open(args.out + ".tmp", "w") as f:
    json.dump(results, f, indent=2)
os.replace(args.out + ".tmp", args.out)
print(f"wrote {args.out}")
