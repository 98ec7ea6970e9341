"""
Generation speed on CPU, side by side in one run, on the same random GPT-2 small (124M) weights:
our generate() with the KV cache, transformers' GPT2LMHeadModel.generate(), and our no-cache
path (nanoGPT's: the whole context through the model for every new token).

    python bench/bench_generate.py                      # contexts 128 and 1024
    python bench/bench_generate.py --new_tokens=16 --repeats=1

tokens/s = new tokens / wall time of the whole generate() call (prompt prefill included), greedy,
batch 1, every method producing the same number of tokens. Each figure is the best of several
runs, methods interleaved, so load from other processes hurts all of them alike.
Goals: the cache at least transformers' speed, and at least 5x the no-cache path at 1024.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import configure  # noqa: E402
from nanophi.device import device_name  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from nanophi.tokenizer import EOT_ID, VOCAB_SIZE  # noqa: E402

# -----------------------------------------------------------------------------
contexts = [128, 1024]  # prompt lengths in tokens
new_tokens = 32  # generated per call at every context
repeats = 5  # timed runs of the cache and transformers per context (best is reported: other load only slows)
repeats_no_cache = 2  # the no-cache path is slow at 1024; it is timed fewer times
n_layer, n_head, n_embd = 12, 12, 768  # GPT-2 small
n_positions = 2048  # room for a 1024 prompt plus new tokens
threads = 0  # torch threads (0 = torch's default)
seed = 0
# -----------------------------------------------------------------------------
configure(globals())
if threads:
    torch.set_num_threads(threads)


def build():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                                    vocab_size=VOCAB_SIZE)).eval()
    ours = GPT(GPTConfig(block_size=n_positions, vocab_size=VOCAB_SIZE, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd)).eval()
    ours.load_hf_state_dict(hf.state_dict())
    return ours, hf


@torch.no_grad()
def main():
    import transformers
    t0 = time.time()
    ours, hf = build()
    print(f"model: {ours.get_num_params() / 1e6:.0f}M parameters (random GPT-2 small weights, n_positions "
          f"{n_positions}), built in {time.time() - t0:.1f}s")
    print(f"machine: {device_name('cpu')}, torch {torch.__version__}, transformers {transformers.__version__}")
    methods = {
        "cache": lambda x, n: ours.generate(x, n, temperature=0)[0, x.size(1):],
        "transformers": lambda x, n: hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                 pad_token_id=EOT_ID)[0, x.size(1):],
        "no_cache": lambda x, n: ours.generate(x, n, temperature=0, use_cache=False)[0, x.size(1):],
    }
    warm = torch.randint(0, VOCAB_SIZE, (1, 16))
    for f in methods.values():  # first calls allocate and pick kernels
        f(warm, 4)
    rows = []
    g = torch.Generator().manual_seed(seed)
    for T in contexts:
        x = torch.randint(0, VOCAB_SIZE, (1, T), generator=g)
        best = {k: float("inf") for k in methods}
        outs = {}
        for r in range(repeats):
            for name, f in methods.items():
                if name == "no_cache" and r >= repeats_no_cache:
                    continue
                t = time.perf_counter()
                outs[name] = f(x, new_tokens)
                best[name] = min(best[name], time.perf_counter() - t)
        same = all(torch.equal(outs["cache"], o) for o in outs.values())
        tps = {k: new_tokens / v for k, v in best.items()}
        rows.append((T, tps, same))
        print(f"  context {T}: " + ", ".join(f"{k} {v:.1f} tok/s" for k, v in tps.items())
              + f", same tokens: {'yes' if same else 'NO'}", flush=True)

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


if __name__ == "__main__":
    main()
