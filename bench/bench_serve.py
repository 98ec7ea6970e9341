"""
Serving benchmark on loopback, side by side in one run against one real serve.py process:

    python bench/bench_serve.py                       # a random GPT-2 124M, 8 and 50 streams, a 10-turn chat
    python bench/bench_serve.py --init_from=out/best.pt --clients=20 --max_tokens=64

1. one at a time: each client's request alone, in turn (its reference text and the single-stream speed);
2. `streams` (8) clients at once: throughput against one at a time (goal >= 4x), time to first token;
3. `clients` (50) clients at once: every one must end with [DONE] and receive exactly its own
   reference text (its prompt and seed): none failed, none mixed (another client's text in its
   own), none diverged (its own text, then different: in fp32; with int8 or bf16 weights a row's
   numbers depend on the rows sharing its step, so texts may diverge, which is reported);
4. `chat_repeats` chats of `chat_turns` turns (each request sends the whole conversation): median time
   to first token of the last turn against the first (goal within 1.5x: the server reuses the
   conversation's cache and prefills only the new turn).
Prints one table; exits 1 if a client failed, got another client's text, or (fp32) diverged.
"""
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
from nanophi.device import measure_copy_bandwidth  # noqa: E402

# -----------------------------------------------------------------------------
init_from = ""  # '' = a random model of the size below; else anything serve.py takes
n_layer, n_head, n_embd, block_size = 12, 12, 768, 1024  # GPT-2 124M
streams = 8  # the throughput comparison: this many clients at once against one at a time
clients = 50  # the load check
max_tokens = 32
max_batch = 8  # serve.py --max_batch
weights = "auto"  # serve.py --weights: fp32 | bf16 | int8 | auto
chat_turns = 10
chat_repeats = 3  # conversations: the medians of their first-token times are compared
time_limit = 900.0  # seconds for one concurrent phase: the benchmark is bounded
# -----------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_model_dir(tmp):
    """A random model's checkpoint for serve.py; (its arguments, weight bytes one token reads)."""
    from dataclasses import asdict
    from nanophi.checkpoint import save_checkpoint
    from nanophi.weights import weight_bytes_per_token
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    model = GPT(cfg)
    save_checkpoint(os.path.join(tmp, "ckpt.pt"), {"model": model.state_dict(), "model_args": asdict(cfg)})
    return ["--init_from=resume", f"--out_dir={tmp}"], weight_bytes_per_token(model)


def served_model(tmp):
    if not init_from:
        return random_model_dir(tmp)
    from nanophi.checkpoint import load_model
    from nanophi.weights import weight_bytes_per_token
    return [f"--init_from={init_from}"], weight_bytes_per_token(load_model(init_from)[0])


def start_server(model_args, log):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "serve.py", f"--port={port}", f"--max_batch={max_batch}",
                             "--access_log=False", f"--max_tokens_cap={max(max_tokens, 1024)}",
                             f"--max_queue={clients + 10}", f"--weights={weights}", *model_args],
                            cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1500):
        if proc.poll() is not None:
            raise SystemExit(f"serve.py exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("serve.py did not start in 300 s")


def request(i):
    return {"prompt": f"Client {i} asks about the number {i * 7919 % 1000}:", "max_tokens": max_tokens,
            "temperature": 1.0, "top_k": 50, "seed": 1000 + i, "ignore_eos": True}


def reference(url):
    """Each client's request alone, in turn: its expected text and its time."""
    texts, times = [], []
    with httpx.Client(timeout=300) as c:
        for i in range(clients):
            t0 = time.perf_counter()
            r = c.post(url + "/v1/completions", json=request(i))
            r.raise_for_status()
            times.append(time.perf_counter() - t0)
            texts.append(r.json()["choices"][0]["text"])
    return texts, times


async def stream_client(c, url, path, body, i=None):
    """One streaming request: time to first token (first text or finish), total time, text."""
    t0 = time.perf_counter()
    first, text, done = None, "", False
    async with c.stream("POST", url + path, json={**body, "stream": True}) as r:
        if r.status_code != 200:
            return {"i": i, "error": f"HTTP {r.status_code}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            ev = json.loads(line[6:])
            if "error" in ev:
                return {"i": i, "error": ev["error"]["message"]}
            for ch in ev["choices"]:
                piece = ch["delta"].get("content") if "delta" in ch else ch["text"]
                if first is None and (piece or ch["finish_reason"]):
                    first = time.perf_counter() - t0
                text += piece or ""
    return {"i": i, "ttft": first, "total": time.perf_counter() - t0, "text": text, "done": done}


async def concurrent(url, n):
    limits = httpx.Limits(max_connections=n + 5, max_keepalive_connections=n + 5)
    async with httpx.AsyncClient(timeout=time_limit, limits=limits) as c:
        t0 = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(
            *(stream_client(c, url, "/v1/completions", request(i), i) for i in range(n)),
            return_exceptions=True), time_limit)
        return results, time.perf_counter() - t0


async def chat(url, k):
    """Conversation k of chat_turns turns; the time to first token of each turn."""
    msgs, ttfts = [], []
    async with httpx.AsyncClient(timeout=time_limit) as c:
        for t in range(chat_turns):
            msgs.append({"role": "user", "content": f"Question {t + 1} of chat {k}: tell me about the number {t * 37 + k}."})
            r = await stream_client(c, url, "/v1/chat/completions", {"messages": msgs, "max_tokens": max_tokens,
                                                                     "temperature": 0, "ignore_eos": True,
                                                                     "trim_history": True})
            if "error" in r:
                raise SystemExit(f"chat turn {t + 1} failed: {r['error']}")
            ttfts.append(r["ttft"])
            msgs.append({"role": "assistant", "content": r["text"]})
    prompt = httpx.post(url + "/v1/chat/completions", json={"messages": msgs[:-1], "max_tokens": 1,
                                                          "trim_history": True}, timeout=300)
    return ttfts, prompt.json()["usage"]["prompt_tokens"]


def chats(url):
    """chat_repeats conversations, one after another: median first-token time of turn 1 and of the last turn."""
    runs = [asyncio.run(chat(url, k)) for k in range(chat_repeats)]
    first = sorted(r[0][0] for r in runs)[len(runs) // 2]
    last = sorted(r[0][-1] for r in runs)[len(runs) // 2]
    return first, last, max(r[1] for r in runs)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def check(results, expected):
    """(clients that failed, clients that got another client's text, clients whose own text diverged).
    A diverged text starts as its reference and then differs: batching changed the numbers (in fp32
    only the summation order, which should almost never change a token; int8 quantizes each step's
    activations together, bf16 takes another kernel for one row than for many)."""
    bad = [r for r in results if isinstance(r, Exception) or "error" in r or not r["done"]]
    wrong = [r for r in results if r not in bad and r["text"] != expected[r["i"]]]
    others = lambda r: [t for j, t in enumerate(expected) if j != r["i"]]  # noqa: E731
    mixed = [r for r in wrong if any(t[:16] and t[:16] in r["text"] for t in others(r))]
    diverged = [r for r in wrong if r not in mixed]
    for r in bad[:3]:
        print("FAILED:", r)
    for r in mixed[:3]:
        print(f"MIXED: client {r['i']} got {r['text'][:60]!r}, expected {expected[r['i']][:60]!r}")
    for r in diverged[:3]:
        print(f"DIVERGED: client {r['i']} after {common_chars(r['text'], expected[r['i']])} characters")
    return bad, mixed, diverged


def common_chars(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main():
    from configurator import configure
    configure(globals())
    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    model_args, weight_bytes = served_model(tmp)
    bandwidth = measure_copy_bandwidth()  # the limit of batch-1 generation, before the server loads the cores
    what = init_from or f"random GPT-2, {n_layer} layers, {n_embd} wide, context {block_size}"
    log = open(os.path.join(tmp, "server.log"), "w")
    load_start = os.getloadavg()[0]
    proc, url = start_server(model_args, log)
    try:
        expected, seq_times = reference(url)
        few, few_wall = asyncio.run(concurrent(url, streams))
        many, many_wall = asyncio.run(concurrent(url, clients))
        first, last, chat_prompt = chats(url)
        reused = httpx.get(url + "/health").json()["reused_prompt_tokens"]
    finally:
        proc.terminate()
        proc.wait(30)
    bad_few, mixed_few, diverged_few = check(few, expected)
    bad_many, mixed_many, diverged_many = check(many, expected)
    one_tps = streams * max_tokens / sum(seq_times[:streams])
    few_ok = [r for r in few if r not in bad_few]
    few_tps = len(few_ok) * max_tokens / few_wall
    many_ok = [r for r in many if r not in bad_many]
    rows = [
        ("one at a time", f"{one_tps:.1f} tok/s", f"{pct(seq_times[:streams], 50):.2f} s per request", ""),
        (f"{streams} concurrent streams", f"{few_tps:.1f} tok/s = {few_tps / one_tps:.2f}x one at a time",
         f"time to first token p50 {pct([r['ttft'] for r in few_ok], 50):.2f} s, "
         f"p90 {pct([r['ttft'] for r in few_ok], 90):.2f} s", "goal >= 4x, p50 < 2 s"),
        (f"{clients} concurrent streams", f"{len(many_ok) * max_tokens / many_wall:.1f} tok/s",
         f"time to first token p50 {pct([r['ttft'] for r in many_ok], 50):.2f} s; "
         f"{len(bad_many)} failed, {len(mixed_many)} mixed, {len(diverged_many)} diverged from their text alone",
         "goal 0 failed, 0 mixed (fp32: 0 diverged)"),
        (f"chat, turn {chat_turns} vs turn 1 (median of {chat_repeats})",
         f"first token {last:.3f} s vs {first:.3f} s = {last / first:.2f}x",
         f"turn {chat_turns} prompt {chat_prompt} tokens; {reused} prompt tokens reused from the cache in the run",
         "goal <= 1.5x"),
    ]
    print(f"\nmodel: {what}; serve.py --max_batch={max_batch} --weights={weights}; {max_tokens} tokens per request (sampling, "
          f"a seed per client, ignore_eos)")
    print(f"machine: {machine()}; load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end\n")
    print("| run | throughput | latency | goal |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nlimit: memory copy bandwidth {bandwidth / 1e9:.1f} GB/s (measured in this run). One at a time, each "
          f"token reads {weight_bytes / 1e6:.0f} MB of fp32 weights (fewer in bf16/int8): {one_tps:.1f} tok/s, whole requests (prompt, "
          f"HTTP) included, is {one_tps * weight_bytes / 1e9:.1f} GB/s = {one_tps * weight_bytes / bandwidth:.0%} of it; "
          "batching reads the weights once per step for all streams")
    failures = len(bad_few) + len(mixed_few) + len(bad_many) + len(mixed_many)
    if weights in ("auto", "fp32"):  # fp32 on a CPU: batching must not change a request's text
        failures += len(diverged_few) + len(diverged_many)
    if failures:
        raise SystemExit(f"{failures} clients failed, got another client's text or (fp32) diverged from their own")


if __name__ == "__main__":
    main()
