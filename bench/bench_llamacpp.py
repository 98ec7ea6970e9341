"""
NanoPhi beside llama.cpp on the same random GPT-2 124M weights, interleaved row by row: decoding at
batch 1 (context 0 and 896) and prefill of 512 tokens, fp32 vs F32, bf16 vs F16, int8 vs Q8_0, with the
load average and this machine's copy bandwidth printed beside them. Builds nothing: give it a llama.cpp
build (docs/benchmarks.md says how to make one offline).

    python bench/bench_llamacpp.py --llama_cpp=$HOME/llama.cpp   # holds build/bin/llama-bench, convert_hf_to_gguf.py
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import GPT, GPTConfig  # noqa: E402
from nanophi.checkpoint import save_checkpoint  # noqa: E402
from nanophi.device import measure_copy_bandwidth  # noqa: E402

BUILD_HINT = ("bench_llamacpp.py: give --llama_cpp=<llama.cpp dir> with build/bin/llama-bench, llama-batched-bench, "
              "llama-server, llama-quantize and convert_hf_to_gguf.py; to build one offline see docs/benchmarks.md "
              "(pip download --no-deps --no-binary :all: llama-cpp-python; cmake on its vendor/llama.cpp)")
TOOLS = ("llama-bench", "llama-batched-bench", "llama-server", "llama-quantize")
FORMATS = (("fp32", "F32"), ("bf16", "F16"), ("int8", "Q8_0"))  # ours, the matching llama.cpp format


def find_tools(tree):
    """{tool: path} in tree's build, or a one-line reason it is not a usable build."""
    if not os.path.isfile(os.path.join(tree, "convert_hf_to_gguf.py")):
        return None, f"bench_llamacpp.py: {tree!r} has no convert_hf_to_gguf.py (give the llama.cpp source tree)"
    found = {}
    for tool in TOOLS:
        for sub in ("build/bin", "build", "bin", "."):
            if os.access(os.path.join(tree, sub, tool), os.X_OK):
                found[tool] = os.path.join(tree, sub, tool)
                break
        else:
            return None, f"bench_llamacpp.py: no {tool} under {tree!r}/build/bin (cmake --build build --target {tool})"
    return found, None


def export_random(work, shape=None):
    """A random GPT-2 (124M unless shape) saved as a checkpoint and exported with export.py; the export folder."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**(shape or {})))
    ckpt = os.path.join(work, "random.pt")
    save_checkpoint(ckpt, {"model": model.state_dict(), "model_args": vars(model.config), "iter_num": 0})
    export_dir = os.path.join(work, "hf")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), f"--init_from={ckpt}",
                        f"--export_dir={export_dir}"], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"bench_llamacpp.py: export.py failed: {r.stderr.strip().splitlines()[-1]}")
    return export_dir


def convert(tree, tools, export_dir, work):
    """{llama.cpp format: gguf path}: F32 and F16 by the tree's converter, Q8_0 by llama-quantize."""
    out = {}
    for fmt in ("F32", "F16"):
        out[fmt] = os.path.join(work, f"gpt2-{fmt}.gguf")
        subprocess.run([sys.executable, os.path.join(tree, "convert_hf_to_gguf.py"), export_dir,
                        "--outtype", fmt.lower(), "--outfile", out[fmt]], check=True, capture_output=True)
    out["Q8_0"] = os.path.join(work, "gpt2-Q8_0.gguf")
    subprocess.run([tools["llama-quantize"], out["F16"], out["Q8_0"], "Q8_0"], check=True, capture_output=True)
    return out


def llama_rate(tools, gguf, threads, repeats, prompt=0, new=0, depth=0):
    """llama-bench's mean tok/s for one test (prompt processing or generation after depth tokens)."""
    r = subprocess.run([tools["llama-bench"], "-m", gguf, "-t", str(threads), "-r", str(repeats), "-p", str(prompt),
                        "-n", str(new), "-d", str(depth), "-o", "json"], check=True, capture_output=True, text=True)
    return json.loads(r.stdout)[0]["avg_ts"]


def our_rate(model, repeats, prompt=0, new=0, depth=0):
    """Our median tok/s: prefill of prompt tokens, or new tokens decoded with depth tokens already cached."""
    from nanophi.engine import Engine, Row
    times = []
    for _ in range(repeats):
        engine = Engine(model, max_batch=1)
        ctx = [int(i) for i in torch.randint(0, 50257, (max(prompt, depth, 1),))]
        if new:
            list(engine.run([Row(ctx, 1, temperature=0, stop_ids=())]))  # the context cached first
            row = Row(ctx, new + 1, temperature=0, stop_ids=())  # reuses the cached prompt
            t = time.perf_counter()
            list(engine.run([row]))
            times.append(new / (time.perf_counter() - t))
        else:
            t = time.perf_counter()
            list(engine.run([Row(ctx, 1, temperature=0, stop_ids=())]))
            times.append(prompt / (time.perf_counter() - t))
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama_cpp", default="", help="llama.cpp source tree with a build")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not args.llama_cpp:
        print(BUILD_HINT, file=sys.stderr)
        sys.exit(2)
    tools, problem = find_tools(args.llama_cpp)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    from nanophi.weights import apply_weights, resolve_weights
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        ggufs = convert(args.llama_cpp, tools, export_random(work), work)
        bandwidth = measure_copy_bandwidth()
        print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; {args.threads} threads; {args.repeats} repetitions "
              f"(llama-bench's mean, our median)")
        print(f"{'metric (GPT-2 124M)':44} {'llama.cpp':>10} {'NanoPhi':>10} {'ratio':>6}  load avg")
        for ours_fmt, llama_fmt in FORMATS:
            model = GPT.from_pretrained(os.path.join(work, "hf")).eval()
            model = apply_weights(model, resolve_weights(ours_fmt, "cpu", "bfloat16" if ours_fmt == "bf16" else "float32"))
            for name, test in ((f"decode batch 1, context 0, {ours_fmt} vs {llama_fmt}", dict(new=64)),
                               (f"decode batch 1, context 896, {ours_fmt} vs {llama_fmt}", dict(new=64, depth=896)),
                               (f"prefill 512, {ours_fmt} vs {llama_fmt}", dict(prompt=512))):
                theirs = llama_rate(tools, ggufs[llama_fmt], args.threads, args.repeats, **test)
                with torch.no_grad():
                    ours = our_rate(model, args.repeats, **test)
                print(f"{name:44} {theirs:10.1f} {ours:10.1f} {ours / theirs:6.2f}  {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
