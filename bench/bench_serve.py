"""
Load test of serve.py on loopback: many concurrent streaming clients against a real server.

    python bench/bench_serve.py                         # 50 clients, a random 6-layer 384-wide GPT-2
    python bench/bench_serve.py --init_from=out/best.pt --clients=20 --max_tokens=64

First every client's request is run alone, one after another (the reference text per seed and
the single-client speed); then all clients stream at once, for each server setting in
active_list (max_active=1: strictly one request at a time; 4: four interleaved). Every client
must finish with [DONE] and receive exactly its own reference text (its own prompt and seed):
none failed, none mixed. Prints latency percentiles (time to first token, total), throughput
and /health's response time under load, and writes the table to out_md.
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

# -----------------------------------------------------------------------------
init_from = ""  # '' = a random model of the size below; else anything serve.py takes
n_layer, n_head, n_embd, block_size = 6, 6, 384, 256
clients = 50
max_tokens = 32
active_list = [1, 4]  # serve.py --max_active values to compare
time_limit = 600.0  # seconds for the whole concurrent phase of one setting: the test is bounded
out_md = "/tmp/readme_parts/serve.md"
# -----------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_model_dir(tmp):
    from dataclasses import asdict
    from nanophi.checkpoint import save_checkpoint
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    save_checkpoint(os.path.join(tmp, "ckpt.pt"), {"model": GPT(cfg).state_dict(), "model_args": asdict(cfg)})
    return ["--init_from=resume", f"--out_dir={tmp}"]


def start_server(model_args, active, log):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "serve.py", f"--port={port}", f"--max_active={active}",
                             "--access_log=False", f"--max_tokens_cap={max(max_tokens, 1024)}", *model_args],
                            cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"serve.py exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("serve.py did not start in 120 s")


def request(i):
    return {"prompt": f"Client {i} asks about the number {i * 7919 % 1000}:", "max_tokens": max_tokens,
            "temperature": 1.0, "top_k": 50, "seed": 1000 + i, "ignore_eos": True}


def reference(url):
    """Each client's request alone, in turn: its expected text and the single-client timing."""
    texts, times = [], []
    with httpx.Client(timeout=300) as c:
        for i in range(clients):
            t0 = time.perf_counter()
            r = c.post(url + "/v1/completions", json=request(i))
            r.raise_for_status()
            times.append(time.perf_counter() - t0)
            texts.append(r.json()["choices"][0]["text"])
    return texts, times


async def stream_client(c, url, i):
    t0 = time.perf_counter()
    first, text, done, finish = None, "", False, None
    async with c.stream("POST", url + "/v1/completions", json={**request(i), "stream": True,
                                                                "stream_options": {"include_usage": True}}) as r:
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
                if ch["text"] and first is None:
                    first = time.perf_counter() - t0
                text += ch["text"]
                finish = ch["finish_reason"] or finish
    return {"i": i, "ttft": first, "total": time.perf_counter() - t0, "text": text, "done": done, "finish": finish}


async def health_probe(url, stop, out):
    async with httpx.AsyncClient(timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            await c.get(url + "/health")
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.2)


async def load(url):
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    probes, stop = [], asyncio.Event()
    async with httpx.AsyncClient(timeout=time_limit, limits=limits) as c:
        probe = asyncio.create_task(health_probe(url, stop, probes))
        t0 = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(stream_client(c, url, i) for i in range(clients)),
                                                        return_exceptions=True), time_limit)
        wall = time.perf_counter() - t0
        stop.set()
        await probe
    return results, wall, probes


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}, " \
           f"load average {load1:.1f} at start"


def main():
    from configurator import configure
    configure(globals())
    mach = machine()
    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    model_args = [f"--init_from={init_from}"] if init_from else random_model_dir(tmp)
    what = init_from or f"random GPT-2, {n_layer} layers, {n_embd} wide, context {block_size}"
    log = open(os.path.join(tmp, "server.log"), "w")
    rows, expected, seq_times, failures = [], None, None, 0
    for active in active_list:
        proc, url = start_server(model_args, active, log)
        try:
            if expected is None:
                expected, seq_times = reference(url)
                seq_tokens = clients * max_tokens
                rows.append(("one at a time (reference)", "-", clients, pct(seq_times, 50), pct(seq_times, 90),
                             pct(seq_times, 99), None, seq_tokens / sum(seq_times), sum(seq_times), None, "-"))
            results, wall, probes = asyncio.run(load(url))
        finally:
            proc.terminate()
            proc.wait(30)
        bad = [r for r in results if isinstance(r, Exception) or "error" in r or not r["done"]]
        mixed = [r for r in results if not isinstance(r, Exception) and "error" not in r
                 and r["text"] != expected[r["i"]]]
        failures += len(bad) + len(mixed)
        for r in bad[:3]:
            print("FAILED:", r)
        for r in mixed[:3]:
            print(f"MIXED: client {r['i']} got {r['text'][:60]!r}, expected {expected[r['i']][:60]!r}")
        ok = [r for r in results if r not in bad]
        ttft, total = [r["ttft"] for r in ok], [r["total"] for r in ok]
        tokens = len(ok) * max_tokens
        rows.append((f"{clients} concurrent streams", active, len(ok) - len(mixed), pct(total, 50), pct(total, 90),
                     pct(total, 99), (pct(ttft, 50), pct(ttft, 90), pct(ttft, 99)), tokens / wall, wall,
                     max(probes) if probes else None, f"{len(bad)} failed, {len(mixed)} mixed"))

    head = ("| run | max_active | clients OK | latency p50 / p90 / p99 (s) | first token p50 / p90 / p99 (s) "
            "| throughput (tok/s) | wall (s) | slowest /health (s) | check |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for run, active, n_ok, l50, l90, l99, tt, tps, wall, hmax, check in rows:
        ttxt = f"{tt[0]:.2f} / {tt[1]:.2f} / {tt[2]:.2f}" if tt else "-"
        htxt = f"{hmax:.3f}" if hmax is not None else "-"
        lines.append(f"| {run} | {active} | {n_ok}/{clients} | {l50:.2f} / {l90:.2f} / {l99:.2f} | {ttxt} "
                     f"| {tps:.1f} | {wall:.1f} | {htxt} | {check} |")
    table = "\n".join(lines)
    print(f"\nmodel: {what}; {clients} clients x {max_tokens} tokens, sampling with a seed per client")
    print(f"machine: {mach}\n")
    print(table)
    write_readme(table, what, mach)
    if failures:
        raise SystemExit(f"{failures} clients failed or got another client's text")


def write_readme(table, what, mach):
    md = f"""## Serving: an OpenAI-compatible API and a web chat page

`serve.py` serves a trained model with FastAPI + uvicorn: `POST /v1/chat/completions`,
`POST /v1/completions` (both with `stream: true` as server-sent events ending in `data: [DONE]`),
`GET /v1/models`, `GET /health`, and a chat page at `/` (task tag picker, sampling controls,
system line, streaming replies, conversation history; plain HTML/JS, works offline).

```bash
python serve.py                                    # out/best.pt (else out/ckpt.pt) on http://127.0.0.1:8000
python serve.py --init_from=out/ckpt.pt --port=8080
python serve.py --init_from=gpt2-medium --model_name=gpt2-medium --temperature=0.7 --top_k=50
NANOPHI_API_KEY=secret python serve.py --host=0.0.0.0   # on a network: always with a key
```

Flags (`--key=value`, or a config file): `init_from` (`resume`, a `.pt`, a gpt2 name, a transformers
directory), `out_dir`, `which` (best/latest), `block_size`, `device`, `dtype`, `host` (default
127.0.0.1), `port`, `api_key` (or `NANOPHI_API_KEY`), `model_name` (the id in /v1/models), sampling
defaults `temperature`, `top_k`, `top_p`, `repetition_penalty`, `max_tokens`, `max_tokens_cap`, `max_n`,
`chat_style`, `system`, limits `max_request_bytes` (413 above it), `max_active`, `max_queue` (503 above it),
and `cors_origins` (other web apps allowed to call the API from a browser; none by default).

Requests follow OpenAI's shapes: `messages` (system, user, assistant; rendered in the training chat
format by `textformat.chat`, the reply cut at `<|endoftext|>` or the next speaker marker), `prompt`
(a string, a list of strings, or token ids), `max_tokens` / `max_completion_tokens`, `temperature`
(0 = greedy), `top_p`, `stop` (up to 4 strings; the text ends before the stop string and is never
streamed past it), `n`, `seed` (same seed, same text, however busy the server is), `echo`,
`stream_options.include_usage`; `usage` token counts; `finish_reason` `stop` or `length`.
Extra fields: `top_k`, `repetition_penalty`, `tag` (`Math`, `Code`, ... : the prompt is rendered as in
training, e.g. `[Math] question\\nAnswer:`), `chat_style` (nanophi, plain, metharme), `system`,
`user_name`/`bot_name`, `ignore_eos`, `trim_history` (drop the oldest turns to fit the context; the
page sends it; the count is in the `X-NanoPhi-Dropped-Turns` header). A prompt that does not fit the
context, `max_tokens` over the cap, invalid JSON, wrong types, an unknown model, or unsupported
features (`logprobs`, `tools`, `frequency_penalty`, ...) get a 4xx with an OpenAI error body
`{{"error": {{"message", "type", "param", "code"}}}}`. With an API key, every `/v1` route needs
`Authorization: Bearer <key>` (compared in constant time); `/`, its assets and `/health` stay open.
A client that disconnects mid-request stops its generation.

```bash
curl http://127.0.0.1:8000/v1/chat/completions -H "Content-Type: application/json" \\
  -d '{{"model": "nanophi", "messages": [{{"role": "user", "content": "What is a prime number?"}}], "max_tokens": 100}}'
curl -N http://127.0.0.1:8000/v1/completions -H "Content-Type: application/json" \\
  -d '{{"prompt": "What is 12*7?", "tag": "Math", "temperature": 0, "stream": true}}'
```

```python
from openai import OpenAI
client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")  # any string when no key is set
r = client.chat.completions.create(model="nanophi", messages=[{{"role": "user", "content": "Hi!"}}],
                                   max_tokens=100, temperature=0.7, extra_body={{"top_k": 50, "tag": "Chat"}})
print(r.choices[0].message.content, r.usage)
for chunk in client.chat.completions.create(model="nanophi", stream=True,
                                            messages=[{{"role": "user", "content": "Tell me a story"}}]):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print(client.completions.create(model="nanophi", prompt="def fib(n):", extra_body={{"tag": "Code"}},
                                max_tokens=64, temperature=0).choices[0].text)
```

How it runs: one worker thread owns the model (the event loop only parses, queues and streams, so
`/health` and the page stay responsive). Up to `max_active` requests generate at once, interleaved
one forward pass (KV cache) at a time; more wait in a FIFO queue. Each request samples with its own
`torch.Generator`, so outputs never mix and seeded requests reproduce exactly. The prompt must fit
the context; a reply may run past it (`model.generate_stream` then keeps the last half of the window).

Load test (`python bench/bench_serve.py`): {what}; {clients} clients each streaming {max_tokens}
tokens (`ignore_eos`, a seed per client); every client must end with `[DONE]` and get exactly the text
the same request produced alone. Machine: {mach}.

{table}

First token / latency are per client from sending the request; throughput is all clients' tokens
over the wall time; the reference row is the same requests sent one after another.
"""
    from nanophi.files import write_text_atomic
    write_text_atomic(out_md, md)
    print(f"\nwrote {out_md}")


if __name__ == "__main__":
    main()
