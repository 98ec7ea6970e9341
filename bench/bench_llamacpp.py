"""
NanoPhi beside llama.cpp on the same random GPT-2 124M weights, interleaved row by row: decoding at
batch 1 (context 0 and 896) and prefill of 512 tokens, fp32 vs F32, bf16 vs F16, int8 vs Q8_0; then
the servers (serve.py against llama-server, 8 slots each): one request at a time, 8 concurrent streams
of 48-128 tokens, time to first token and peak memory. The load average and this machine's copy
bandwidth are printed beside them. Builds nothing: give it a llama.cpp build (docs/benchmarks.md says
how to make one offline).

    python bench/bench_llamacpp.py --llama_cpp=$HOME/llama.cpp   # holds build/bin/llama-bench, convert_hf_to_gguf.py
    python bench/bench_llamacpp.py --llama_cpp=... --servers=False --json=llamacpp.json
"""
import argparse
import asyncio
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
from nanophi.device import measure_copy_bandwidth, measure_matmul_flops  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import free_port, pct, stream_client  # noqa: E402  (the same client for both servers)

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
    """llama-bench's mean tok/s for one test (prompt processing or generation after depth tokens), or
    None when llama-bench fails on it (its exit is printed in the row)."""
    r = subprocess.run([tools["llama-bench"], "-m", gguf, "-t", str(threads), "-r", str(repeats), "-p", str(prompt),
                        "-n", str(new), "-d", str(depth), "-o", "json"], capture_output=True, text=True)
    if r.returncode:
        print(f"  llama-bench failed (exit {r.returncode}) on {os.path.basename(gguf)} -p {prompt} -n {new} -d {depth}",
              flush=True)
        return None
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


def linear_ms(model, repeats):
    """Milliseconds one batch-1 token spends in the model's Linear layers alone (lm_head included), each
    fed one row in sequence, best of repeats: the floor under our decoding step in this format, the rest
    being attention, LayerNorm, GELU, sampling and Python."""
    from nanophi.weights import BF16Linear, FP32Linear, Int8Linear
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, FP32Linear, BF16Linear, Int8Linear))]
    xs = [torch.randn(1, 1, m.in_features) for m in layers]
    best = float("inf")
    for _ in range(repeats + 1):
        t = time.perf_counter()
        for m, x in zip(layers, xs):
            m(x)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


STREAMS = 8
STREAM_TOKENS = [48, 64, 80, 96, 112, 128, 56, 72]  # one request per stream, 48-128 tokens each


def wait_ready(proc, url, what):
    import httpx
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"bench_llamacpp.py: {what} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"bench_llamacpp.py: {what} did not answer /health in 120 s")


def peak_mb(pid):
    """The process's peak resident memory (VmHWM) in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def body(i):
    return {"prompt": f"Stream {i} writes about the number {i * 7919 % 1000}:", "max_tokens": STREAM_TOKENS[i],
            "temperature": 0, "ignore_eos": True}


async def streams(url):
    """STREAMS streaming requests at once: (aggregate tok/s, time to first token p50)."""
    import httpx
    async with httpx.AsyncClient(timeout=600) as c:
        t = time.perf_counter()
        rs = await asyncio.gather(*(stream_client(c, url, "/v1/completions", body(i), i) for i in range(STREAMS)))
        wall = time.perf_counter() - t
    bad = [r for r in rs if "error" in r or not r["done"]]
    if bad:
        raise SystemExit(f"bench_llamacpp.py: {url}: a stream failed: {bad[0]}")
    return sum(STREAM_TOKENS) / wall, pct([r["ttft"] for r in rs], 50)


def one_at_a_time(url):
    """The same requests in turn, whole (not streamed): tok/s over all of them, tokens counted by the server."""
    import httpx
    tokens, t = 0, time.perf_counter()
    with httpx.Client(timeout=600) as c:
        for i in range(STREAMS):
            r = c.post(url + "/v1/completions", json=body(i))
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]
    return tokens / (time.perf_counter() - t)


def runtime_mb():
    """Peak resident MB of a Python that imports what serve.py imports and loads no weights: the floor
    under our server's memory, which llama-server (one C++ binary) does not have."""
    code = ("import sys; sys.argv = ['serve.py']; import serve; "
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    return float(r.stdout.split()[-1]) if r.returncode == 0 and r.stdout.split() else None


def serve_figures(cmd, port, what):
    """Start a server, measure it (one at a time, 8 streams, peak memory), stop it."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, what)
        one = one_at_a_time(url)
        many, ttft = asyncio.run(streams(url))
        return {"one": one, "streams": many, "ttft": ttft, "peak_mb": peak_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(30)


def server_rows(tools, gguf, ckpt, ours_fmt, llama_fmt, threads):
    """(name, llama.cpp, NanoPhi, ratio) rows for llama-server against serve.py; ratios > 1 favour NanoPhi."""
    port = free_port()
    try:
        theirs = serve_figures([tools["llama-server"], "-m", gguf, "-t", str(threads), "-np", str(STREAMS),
                                "-c", str(STREAMS * 1024), "--host", "127.0.0.1", "--port", str(port)], port,
                               "llama-server")
    except SystemExit as e:  # llama-server crashed on this format: our figures alone, the failure said
        print(f"  {e}", flush=True)
        theirs = dict.fromkeys(("one", "streams", "ttft", "peak_mb"))
    port = free_port()
    ours = serve_figures([sys.executable, "serve.py", f"--init_from={ckpt}", f"--port={port}",
                          f"--max_batch={STREAMS}", f"--weights={ours_fmt}", "--access_log=False"], port, "serve.py")
    tag = f"{ours_fmt} vs {llama_fmt}"

    def ratio(k, ours_over_theirs=True):
        if theirs[k] is None:
            return None
        return ours[k] / theirs[k] if ours_over_theirs else theirs[k] / ours[k]
    return [(f"server, one request at a time, {tag} (tok/s)", theirs["one"], ours["one"], ratio("one")),
            (f"server, {STREAMS} streams of 48-128 tokens, {tag} (tok/s)", theirs["streams"], ours["streams"],
             ratio("streams")),
            (f"server, first token p50 at {STREAMS} streams, {tag} (s)", theirs["ttft"], ours["ttft"],
             ratio("ttft", False)),
            (f"server peak memory, {tag} (MB)", theirs["peak_mb"], ours["peak_mb"], ratio("peak_mb", False))]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama_cpp", default="", help="llama.cpp source tree with a build")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--servers", default="True", choices=["True", "False"], help="also the llama-server rows")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    p.add_argument("--formats", default="fp32,bf16,int8", help="which of fp32,bf16,int8 to measure")
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
    rows = []

    def show(name, theirs, ours, ratio):
        rows.append({"metric": name, "llama.cpp": theirs and round(theirs, 3), "nanophi": round(ours, 3),
                     "ratio": ratio and round(ratio, 3), "load_avg": os.getloadavg()[0]})
        theirs, ratio = ("failed", "") if theirs is None else (f"{theirs:.2f}", f"{ratio:.2f}")
        print(f"{name:58} {theirs:>10} {ours:10.2f} {ratio:>6}  {os.getloadavg()[0]:.2f}", flush=True)

    with tempfile.TemporaryDirectory() as work:
        ggufs = convert(args.llama_cpp, tools, export_random(work), work)
        bandwidth = measure_copy_bandwidth()
        # prefill is compute-bound: each token costs 2 FLOPs per weight of the blocks' Linear layers (the
        # vocab projection is of the last position only); the rate beside this machine's fp32 matmul
        matmul = measure_matmul_flops("float32")
        cfg = GPTConfig()  # a block's Linear layers: qkv 3 C^2, proj C^2, MLP 4 C^2 + 4 C^2
        flops_per_token = 2 * 12 * cfg.n_layer * cfg.n_embd ** 2
        print(f"fp32 matmul (2048^2, torch's BLAS) {matmul / 1e9:.0f} GFLOP/s; prefill needs {flops_per_token / 1e6:.0f} "
              f"MFLOP a token in Linear layers, so at most {matmul / flops_per_token:.0f} tok/s at that rate")
        print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; {args.threads} threads; {args.repeats} repetitions "
              f"(llama-bench's mean, our median); ratio = NanoPhi / llama.cpp (for time and memory: llama.cpp / NanoPhi)")
        print(f"{'metric (GPT-2 124M)':58} {'llama.cpp':>10} {'NanoPhi':>10} {'ratio':>6}  load avg")
        for ours_fmt, llama_fmt in FORMATS:
            if ours_fmt not in args.formats.split(","):
                continue
            model = GPT.from_pretrained(os.path.join(work, "hf")).eval()
            model = apply_weights(model, resolve_weights(ours_fmt, "cpu", "bfloat16" if ours_fmt == "bf16" else "float32"))
            for name, test in ((f"decode batch 1, context 0, {ours_fmt} vs {llama_fmt} (tok/s)", dict(new=64)),
                               (f"decode batch 1, context 896, {ours_fmt} vs {llama_fmt} (tok/s)", dict(new=64, depth=896)),
                               (f"prefill 512, {ours_fmt} vs {llama_fmt} (tok/s)", dict(prompt=512))):
                theirs = llama_rate(tools, ggufs[llama_fmt], args.threads, args.repeats, **test)
                with torch.no_grad():
                    ours = our_rate(model, args.repeats, **test)
                show(name, theirs, ours, theirs and ours / theirs)
                if test.get("prompt"):
                    print(f"  prefill in Linear FLOPs: ours {ours * flops_per_token / 1e9:.0f} GFLOP/s, llama.cpp "
                          f"{(theirs or 0) * flops_per_token / 1e9:.0f}, this machine's fp32 matmul "
                          f"{matmul / 1e9:.0f}", flush=True)
                if test.get("depth") is None and test.get("new"):  # what our step is made of, at context 0
                    with torch.no_grad():
                        lin = linear_ms(model, args.repeats)
                        os.environ["NANOPHI_DECODER"] = "0"  # the same step through model.forward (nanophi/decode.py)
                        unfused = our_rate(model, args.repeats, **test)
                        del os.environ["NANOPHI_DECODER"]
                    step = 1e3 / ours
                    print(f"  {ours_fmt}: our Linear layers alone {lin:.1f} ms a token (at most {1e3 / lin:.0f} tok/s); "
                          f"the rest of our step {step - lin:.1f} ms; llama.cpp's whole step "
                          f"{1e3 / theirs if theirs else float('nan'):.1f} ms; through model.forward instead of the "
                          f"one-call step {unfused:.2f} tok/s ({ours / unfused:.2f}x)", flush=True)
                    rows.append({"metric": f"{ours_fmt} Linear layers alone (ms a token)", "nanophi": round(lin, 2),
                                 "rest_ms": round(step - lin, 2), "llama.cpp_step_ms": theirs and round(1e3 / theirs, 2),
                                 "model_forward_tok_s": round(unfused, 2)})
            del model
            if args.servers == "True":
                for row in server_rows(tools, ggufs[llama_fmt], os.path.join(work, "random.pt"), ours_fmt, llama_fmt,
                                       args.threads):
                    show(*row)
        if args.servers == "True" and sys.platform == "linux":
            floor = runtime_mb()
            print(f"memory floor: serve.py's imports alone (torch, Python, FastAPI), before any weight: {floor:.0f} MB")
            rows.append({"metric": "serve.py's imports alone (MB)", "nanophi": floor})
        print(f"bound: batch-1 fp32 decoding reads about 500 MB of weights per token: at most "
              f"{bandwidth / 500e6:.0f} tok/s at this copy bandwidth (bf16 weights are half as many bytes, int8 a quarter)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"copy_bandwidth_gbs": bandwidth / 1e9, "fp32_matmul_gflops": matmul / 1e9, "threads": args.threads,
                       "rows": rows}, f, indent=1)

if __name__ == "__main__":
    main()
