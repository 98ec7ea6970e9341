"""
Generation speed on CPU, side by side in one run, on the same random GPT-2 small (124M) weights:
the engine (nanophi/engine.py) with its KV cache, transformers' GPT2LMHeadModel.generate(), and our no-cache
model.generate (nanoGPT's: the whole context through the model for every new token).

    python bench/bench_generate.py                      # contexts 128 and 1024
    python bench/bench_generate.py --new_tokens=16 --repeats=1

tokens/s = new tokens / wall time of the whole generate() call (prompt prefill included), greedy,
batch 1, every method producing the same number of tokens. Each figure is the best of several
runs, methods interleaved, so load from other processes hurts all of them alike.
Goals: the cache at least transformers' speed, and at least 5x the no-cache path at 1024.

Weight formats (nanophi/weights.py): the cache path again with bf16 and int8 weights, interleaved with
fp32 and with a large tensor copy, the memory bandwidth this machine has in the same minute. Batch-1
decoding reads every weight once per token, so weight bytes per token x decode tok/s is the bandwidth
it uses; prefill (the prompt, compute-bound) is timed apart. Goal: bf16 decoding >= 1.8x fp32.
Batched decoding (batch_rows): 1, 2, 4 and 8 rows stepping together in nanophi/engine.py, as serve.py
runs them, in fp32 (plain weights, the fp32 gemv kernel serve.py takes, and the oneDNN-packed copy it
took before), bf16 and int8: what serving's
continuous batching gets from one pass over the weights per step.
Quality (quality=True): validation loss (whole sequences, and one position at a time as batch-1 decoding
runs) and greedy agreement of each format against fp32, on a
model that has learnt something: quality_init_from, or by default a small GPT trained here for
quality_iters steps on the Python documentation (random weights give near-uniform logits, where
any format "agrees").
"""
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure  # noqa: E402
from nanophi.device import cpu_has_bf16, device_name, measure_copy_bandwidth  # noqa: E402
from nanophi.engine import Engine, Row  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from nanophi.tokenizer import EOT_ID, VOCAB_SIZE  # noqa: E402
from nanophi import gemv  # noqa: E402
from nanophi.weights import apply_weights, resolve_weights, weight_bytes_per_token  # noqa: E402

# -----------------------------------------------------------------------------
contexts = [128, 1024]  # prompt lengths in tokens
new_tokens = 32  # generated per call at every context
repeats = 5  # timed runs of the cache and transformers per context (best is reported: other load only slows)
repeats_no_cache = 2  # the no-cache path is slow at 1024; it is timed fewer times
n_layer, n_head, n_embd = 12, 12, 768  # GPT-2 small
n_positions = 2048  # room for a 1024 prompt plus new tokens
threads = 0  # torch threads (0 = torch's default)
seed = 0
weights = ["bf16", "int8", "int8-dyn"]  # formats timed beside fp32 (bf16 only on CPUs with native bf16);
# int8-dyn: torch.ao's quantize_dynamic, what weights=int8 was before issue 23 (int8 activations too)
batch_rows = [1, 2, 4, 8]  # rows decoding together in the batched table ([] = skip it)
quality = True  # validation loss and greedy agreement of each format against fp32
quality_init_from = ""  # a checkpoint as sample.py's init_from; '' = a small GPT trained here
quality_iters = 200  # training steps of that small GPT (4 layers x 256, batch 8 x 64)
quality_prompts = 16  # greedy continuations compared per format
# -----------------------------------------------------------------------------
configure(globals())
if threads:
    torch.set_num_threads(threads)


def bf16_ok():
    try:
        resolve_weights("bf16", "cpu")
        return True
    except ValueError:
        return False


def make_format(model, w):
    """A copy of model in weight format w (nanophi/weights.py's, or the int8-dyn baseline)."""
    if w != "int8-dyn":
        return apply_weights(copy.deepcopy(model), w)
    import warnings
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8)


def packed_baseline(model, batch):
    """fp32 as serve.py ran it before the fp32 gemv kernel: plain weights at 1-2 rows, a second copy
    prepacked by oneDNN for more (FP32Linear's fallback where the kernel does not build)."""
    from nanophi.weights import FP32Linear
    m = apply_weights(copy.deepcopy(model), "fp32", batch=batch)
    for layer in m.modules():
        if isinstance(layer, FP32Linear):
            layer.gemv = None
            layer.packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), batch)
    return m


def build():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                                    vocab_size=VOCAB_SIZE)).eval()
    ours = GPT(GPTConfig(block_size=n_positions, vocab_size=VOCAB_SIZE, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd)).eval()
    ours.load_hf_state_dict(hf.state_dict())
    return ours, hf


def stream_timed(model, x, n):
    """Greedy ids of one engine row (no stop id), its time to the first new token (the prefill) and
    its total time."""
    t0 = time.perf_counter()
    row, first = Row(x[0].tolist(), n, temperature=0, stop_ids=()), None
    for _ in Engine(model, max_batch=1).run([row]):
        first = first if first is not None else time.perf_counter() - t0
    return torch.tensor(row.seen[x.size(1):]), first, time.perf_counter() - t0


@torch.no_grad()
def main():
    import transformers
    t0 = time.time()
    ours, hf = build()
    formats = {"fp32": make_format(ours, "fp32")}  # as sample.py runs it: the kernel or BLAS, as probed here
    choice, entry = gemv.fp32_rows_choice()
    print(gemv.describe_choice(entry))
    if choice == "gemv":
        formats["fp32 BLAS (plain F.linear)"] = ours
    for w in weights:
        if w == "bf16" and not bf16_ok():
            print("weights bf16: skipped (no native bf16 and no gemv kernel on this CPU)")
            continue
        formats[w] = make_format(ours, w)
    print(f"model: {ours.get_num_params() / 1e6:.0f}M parameters (random GPT-2 small weights, n_positions "
          f"{n_positions}), built in {time.time() - t0:.1f}s; weights timed: {', '.join(formats)}")
    print(f"machine: {device_name('cpu')}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"bf16 CPU: {cpu_has_bf16()}")
    others = {
        "transformers": lambda x, n: hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                 pad_token_id=EOT_ID)[0, x.size(1):],
        "no_cache": lambda x, n: ours.generate(x, n, temperature=0)[0, x.size(1):],
    }
    warm = torch.randint(0, VOCAB_SIZE, (1, 16))
    for f in others.values():  # first calls allocate and pick kernels
        f(warm, 4)
    for m in formats.values():
        stream_timed(m, warm, 4)
    bandwidth = 0.0
    rows, fmt_rows = [], []
    g = torch.Generator().manual_seed(seed)
    for T in contexts:
        x = torch.randint(0, VOCAB_SIZE, (1, T), generator=g)
        best = {k: float("inf") for k in list(others) + ["cache"]}
        prefill = {k: float("inf") for k in formats}
        decode = {k: float("inf") for k in formats}
        outs = {}
        for r in range(repeats):
            bandwidth = max(bandwidth, measure_copy_bandwidth(repeats=1))  # the same minute's load as the runs
            for name, f in others.items():
                if name == "no_cache" and r >= repeats_no_cache:
                    continue
                t = time.perf_counter()
                outs[name] = f(x, new_tokens)
                best[name] = min(best[name], time.perf_counter() - t)
            for w, m in formats.items():
                outs[w], first, total = stream_timed(m, x, new_tokens)
                prefill[w], decode[w] = min(prefill[w], first), min(decode[w], total - first)
                if w == "fp32":
                    best["cache"] = min(best["cache"], total)
        outs["cache"] = outs["fp32"]
        same = all(torch.equal(outs["cache"], outs[k]) for k in list(others) + ["cache"])
        tps = {k: new_tokens / v for k, v in best.items()}
        rows.append((T, tps, same))
        print(f"  context {T}: " + ", ".join(f"{k} {v:.1f} tok/s" for k, v in tps.items())
              + f", same tokens: {'yes' if same else 'NO'}", flush=True)
        for w, m in formats.items():
            kv = 2 * n_layer * (T + new_tokens / 2) * n_embd * 4  # the fp32 KV cache read per token, mean context
            fmt_rows.append((T, w, prefill[w], (new_tokens - 1) / decode[w], weight_bytes_per_token(m), kv,
                             int((outs[w] == outs["fp32"]).sum())))

    print()
    print("| context | new tokens | KV cache tok/s | transformers tok/s | no cache tok/s | cache / transformers "
          "| cache / no cache | same tokens |")
    print("|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for T, tps, same in rows:
        print(f"| {T} | {new_tokens} | {tps['cache']:.1f} | {tps['transformers']:.1f} | {tps['no_cache']:.2f} | "
              f"{tps['cache'] / tps['transformers']:.2f}x | {tps['cache'] / tps['no_cache']:.1f}x | "
              f"{'yes' if same else 'NO'} |")
    ok = all(t["cache"] >= t["transformers"] for _, t, _ in rows)
    long = [t for T, t, _ in rows if T >= 1024]
    print(f"\ngoal cache >= transformers: {'met' if ok else 'NOT met'}")
    if long:
        print(f"goal cache >= 5x no cache at 1024: {'met' if all(t['cache'] >= 5 * t['no_cache'] for t in long) else 'NOT met'}")
    print_formats(fmt_rows, bandwidth)
    print_linear_split(formats, fmt_rows)
    if batch_rows:
        batch_table(ours)
    if quality:
        quality_table(list(formats))


def print_formats(fmt_rows, bandwidth):
    print(f"\nweight formats, batch 1, KV cache; memory copy bandwidth measured in this run (best of "
          f"{repeats * len(contexts)}, read + write): {bandwidth / 1e9:.1f} GB/s")
    print("| context | weights | prefill s | decode tok/s | decode vs fp32 | MB read per token (weights + KV) "
          "| GB/s read | of copy bandwidth | tokens equal to fp32 |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    base = {T: tps for T, w, _, tps, _, _, _ in fmt_rows if w == "fp32"}
    for T, w, pre, tps, wbytes, kv, equal in fmt_rows:
        read = (wbytes + kv) * tps
        print(f"| {T} | {w} | {pre:.2f} | {tps:.1f} | {tps / base[T]:.2f}x | {wbytes / 1e6:.0f} + {kv / 1e6:.0f} | "
              f"{read / 1e9:.1f} | {read / bandwidth:.0%} | {equal}/{new_tokens} |")
    for T in contexts:
        bf = [tps for t, w, _, tps, _, _, _ in fmt_rows if t == T and w == "bf16"]
        if bf:
            print(f"goal bf16 decode >= 1.8x fp32 at context {T}: {'met' if bf[0] >= 1.8 * base[T] else 'NOT met'} "
                  f"({bf[0] / base[T]:.2f}x)")


def linear_ms(model):
    """Best time of the model's Linear layers (lm_head included) at one row each, in model order: the
    weight-reading part of a batch-1 decoding step (the layers are far larger than the caches)."""
    layers = [m for m in model.modules() if hasattr(m, "in_features")]
    xs = {n: torch.randn(1, 1, n) for n in {m.in_features for m in layers}}
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for m in layers:
            m(xs[m.in_features])
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def print_linear_split(formats, fmt_rows):
    """A decoding step split into its Linear layers (timed alone) and the rest (attention, LayerNorm,
    sampling, Python), which no weight format speeds up."""
    ms = {w: linear_ms(m) for w, m in formats.items()}
    print("\nthe decoding step split: Linear layers timed alone at one row, the rest = step - Linear")
    print("| context | weights | Linear ms | Linear GB/s | Linear vs fp32 | rest of the step ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for T, w, _, tps, wbytes, _, _ in fmt_rows:
        print(f"| {T} | {w} | {ms[w]:.1f} | {wbytes / ms[w] / 1e6:.1f} | {ms['fp32'] / ms[w]:.2f}x | "
              f"{1e3 / tps - ms[w]:.1f} |")


def decode_rate(model, n, prompts):
    """Decoding tok/s of n rows stepping together in nanophi/engine.py (their prefill is not timed)."""
    engine = Engine(model, max_batch=max(batch_rows), cache_slots=0)
    rows = [Row(p, new_tokens, temperature=0, stop_ids=()) for p in prompts[:n]]
    for r in rows:
        engine.add(r)
    while any(len(r.todo) > 1 or r.slot is None for r in rows):
        engine.step()
    t0, k0 = time.perf_counter(), engine.tokens
    while engine.busy:
        engine.step()
    return (engine.tokens - k0) / (time.perf_counter() - t0)


def batch_table(model):
    most = max(batch_rows)
    formats = {"fp32": model, f"fp32 for {most} rows (serve.py: gemv kernel)": apply_weights(copy.deepcopy(model), "fp32", batch=most),
               f"fp32 packed for {most} (before: oneDNN copy)": packed_baseline(model, most)}
    if bf16_ok() and "bf16" in weights:
        formats[f"bf16 packed for {most}"] = apply_weights(copy.deepcopy(model), "bf16", batch=most)
    for w in ("int8", "int8-dyn"):
        if w in weights:
            formats[w] = make_format(model, w)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, VOCAB_SIZE, (16 + 3 * i,), generator=g).tolist() for i in range(most)]
    best = {(w, n): 0.0 for w in formats for n in batch_rows}
    for _ in range(max(1, repeats // 2)):  # interleaved, best of: load from other processes hurts all alike
        for n in batch_rows:
            for w, m in formats.items():
                best[w, n] = max(best[w, n], decode_rate(m, n, prompts))
    base = best["fp32", batch_rows[0]]
    print(f"\nbatched decoding (nanophi/engine.py, as serve.py steps its rows): tok/s of all rows together, "
          f"greedy, prompts of 16-{16 + 3 * (most - 1)} tokens, best of {max(1, repeats // 2)}; "
          f"in brackets: x fp32 at {batch_rows[0]} row(s)")
    print("| weights | " + " | ".join(f"{n} row{'s' if n > 1 else ''}" for n in batch_rows) + " |")
    print("|---|" + "---:|" * len(batch_rows))
    for w in formats:
        print(f"| {w} | " + " | ".join(f"{best[w, n]:.1f} ({best[w, n] / base:.2f}x)" for n in batch_rows) + " |")


def train_small():
    """A 4-layer, 256-wide GPT trained briefly on the Python documentation (offline_sources), and
    held-out token ids: every 10th document is validation."""
    from nanophi.offline_sources import doc_sections, module_docstrings
    from nanophi.tokenizer import encode
    docs = [rec["text"] for _, rec in doc_sections(subdirs=("tutorial", "howto"))]
    docs = docs or [rec["text"] for _, rec in module_docstrings()]  # Python's docs not installed
    train_ids, val_ids = [], []
    for i, text in enumerate(docs):
        (val_ids if i % 10 == 0 else train_ids).extend(encode(text) + [EOT_ID])
    train_ids, val_ids = torch.tensor(train_ids), torch.tensor(val_ids)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=64, vocab_size=VOCAB_SIZE, n_layer=4, n_head=4, n_embd=256))
    opt = model.configure_optimizers(0.1, 2e-3, (0.9, 0.95), "cpu")
    t0 = time.time()
    with torch.enable_grad():
        for it in range(quality_iters):
            for group in opt.param_groups:  # linear warm-up, then constant
                group["lr"] = 2e-3 * min(1.0, (it + 1) / 30)
            i = torch.randint(len(train_ids) - 65, (8,)).unsqueeze(1) + torch.arange(65)
            batch = train_ids[i]
            _, loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    print(f"quality model: 4 layers x 256 trained {quality_iters} steps (batch 8 x 64) on {len(train_ids):,} tokens "
          f"of the Python docs in {time.time() - t0:.0f}s, last training loss {loss.item():.2f}")
    return model.eval(), val_ids


def decode_loss(model, x, y):
    """Validation loss with every position fed alone through a KV cache, one row: the weights read as
    batch-1 generation reads them (int8 and bf16 take the gemv kernels there, other kernels on whole
    sequences); (loss, next-token argmax)."""
    from nanophi.engine import KVCache
    total, top1 = 0.0, []
    for seq, tgt in zip(x, y):
        cache = KVCache(model.config, 1, len(seq), "cpu", torch.float32)
        logits = torch.cat([model(seq[t:t + 1].view(1, 1), cache=cache, slots=[0], last_only=True)[0][0]
                            for t in range(len(seq))])
        total += torch.nn.functional.cross_entropy(logits, tgt, reduction="sum").item()
        top1.append(logits.argmax(-1))
    return total / y.numel(), torch.cat(top1)


def quality_table(names):
    """Validation loss, next-token agreement and greedy continuations of each format vs fp32."""
    if quality_init_from:
        from nanophi.checkpoint import load_model
        from nanophi.offline_sources import doc_sections
        from nanophi.tokenizer import encode
        model, source = load_model(quality_init_from)
        val_ids = torch.tensor([t for _, rec in list(doc_sections(subdirs=("tutorial",)))[::10]
                                for t in encode(rec["text"]) + [EOT_ID]])
        print(f"quality model: {source}, validation text: every 10th section of the Python tutorial")
    else:
        model, val_ids = train_small()
    T = min(model.config.block_size, 128)
    n = min(64, (len(val_ids) - 1) // T)
    x, y = val_ids[:n * T].view(n, T), val_ids[1:n * T + 1].view(n, T)
    starts = torch.linspace(0, len(val_ids) - 65, quality_prompts).long()
    prompts = [val_ids[s:s + 32].unsqueeze(0) for s in starts]
    results = {}
    for w in names:
        m = model if w == "fp32" else make_format(model, w)
        loss = sum(m(x[i:i + 8], y[i:i + 8], reduction="sum")[1].item() for i in range(0, n, 8)) / y.numel()
        top1 = torch.cat([m(x[i:i + 8])[0].argmax(-1) for i in range(0, n, 8)])
        dloss, dtop1 = decode_loss(m, x[:8, :64], y[:8, :64])
        greedy = [stream_timed(m, p, 32)[0] for p in prompts]  # the engine: prompt prefill, then batch-1 steps
        results[w] = (loss, top1, dloss, dtop1, greedy)
    print(f"\nquality of each format vs fp32: validation loss over {y.numel():,} tokens (whole sequences: "
          f"the many-row kernels) and over {min(n, 8) * 64} of them fed one position at a time through the KV "
          f"cache (the batch-1 decoding kernels), next-token argmax agreement at the same positions, "
          f"{quality_prompts} greedy continuations of 32 tokens by the engine")
    print("| weights | val loss | delta vs fp32 | next-token agreement | decoding val loss | delta vs fp32 "
          "| decoding agreement | identical continuations | mean tokens before the first difference |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_loss, base_top1, base_dloss, base_dtop1, base_greedy = results["fp32"]
    for w, (loss, top1, dloss, dtop1, greedy) in results.items():
        prefix = [int((a != b).nonzero()[0]) if (a != b).any() else len(a) for a, b in zip(greedy, base_greedy)]
        print(f"| {w} | {loss:.4f} | {loss - base_loss:+.4f} | {(top1 == base_top1).float().mean().item():.2%} | "
              f"{dloss:.4f} | {dloss - base_dloss:+.4f} | {(dtop1 == base_dtop1).float().mean().item():.2%} | "
              f"{sum(p == 32 for p in prefix)}/{len(prefix)} | {sum(prefix) / len(prefix):.1f} |")
    for w, (loss, *_) in results.items():
        if w != "fp32":
            print(f"goal {w} validation loss within 0.02 of fp32: {'met' if abs(loss - base_loss) <= 0.02 else 'NOT met'}")


if __name__ == "__main__":
    main()
