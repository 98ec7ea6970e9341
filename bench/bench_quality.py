"""
The data loop's figures, measured in one run (docs/quality.md):

  1. scoring throughput with the offline features (hashed words+bigrams, logistic regression), docs/s;
     goal >= 2,000 docs/s on 2 cores. The machine is shared: the load average is printed beside it.
  2. generation throughput through the real openai client against serve.py (a tiny random 1k-context
     checkpoint), at concurrency 1, 4 and 8: completion tokens/s and the ratio to concurrency 1.
  3. an ablation: the same small model trained on equal tokens of unfiltered and quality-filtered
     textbook+code data (the offline sources), both measured on one clean held-out set (the unfiltered
     val split: decontaminated, and by the seeded hash split disjoint from both training sets):
     masked validation loss and per-token exact match (greedy next token equals the target).

    python bench/bench_quality.py
    python bench/bench_quality.py --skip_ablation=True --out=/tmp/quality_bench.md
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configurator import configure  # noqa: E402

n_docs = 5000            # documents scored in part 1
gen_requests = 16        # requests per concurrency level in part 2
gen_tokens = 64          # completion tokens per request
ablation_iters = 100     # training iterations per arm (equal tokens: same iterations x batch x block)
min_quality = 0.5
skip_generation = False
skip_ablation = False
out = ""                 # also write the Markdown here
configure(globals())

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nanophi import quality  # noqa: E402

lines = []


def say(s=""):
    print(s, flush=True)
    lines.append(s)


def load():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def reference_classifiers(work):
    """One classifier per task, DCLM style (reference positives against a random sample of the task's documents):
    textbook: the hand-written sets + Python's tutorial/how-to/FAQ sections (as docs/quality.md runs it);
    code: the task's own functions whose docstring shows a worked example (>>>), a stand-in for phi-1's
    'self-contained and instructive' judgement, since no judge that can grade is available offline."""
    docs = {task: [t for _, t in quality.task_documents(task, "offline")] for task in ("textbook", "code")}
    refs = {"textbook": quality.reference_positives("handwritten,python-docs"),
            "code": [t for t in docs["code"] if ">>>" in t]}
    dirs = {}
    for task in ("textbook", "code"):
        texts, labels = quality.reference_labels(refs[task], docs[task], seed=1337)
        dirs[task] = os.path.join(work, f"classifier-{task}")
        m = quality.train(texts, labels, dirs[task])
        say(f"{task} classifier (reference labels: {m['positives']} positives, {m['negatives']} negatives): held-out "
            f"accuracy {m['accuracy']:.3f}, F1 {m['f1']:.3f}, AUC {m['auc']:.3f}")
    return dirs, docs["textbook"] + docs["code"]


def bench_scoring(model_dir, docs):
    docs = (docs * (n_docs // len(docs) + 1))[:n_docs]
    scorer = quality.Scorer(model_dir)
    scorer.score(docs[:64])  # warm-up
    before = load()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(docs), 512):
        scorer.score(docs[i:i + 512])
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    chars = np.mean([min(len(d), quality.MAX_CHARS) for d in docs])
    say(f"\n## 1. Scoring throughput (offline features, torch threads {torch.get_num_threads()})\n")
    say("| documents | mean chars scored | wall s | docs/s (wall) | CPU s | docs per CPU-second | goal | load before / after |")
    say("|---|---|---|---|---|---|---|---|")
    say(f"| {len(docs):,} | {chars:,.0f} | {dt:.2f} | {len(docs) / dt:,.0f} | {cpu:.2f} | {len(docs) / cpu:,.0f} | 2,000 "
        f"| {before[13:]} / {load()[13:]} |")
    say("\nScoring runs in one thread; on a shared machine the wall rate is the CPU rate times the share of a core "
        "this process gets.")


def tiny_checkpoint(path):
    from dataclasses import asdict
    from model import GPT, GPTConfig
    from nanophi.checkpoint import BEST, save_checkpoint
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=1024, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)
    os.makedirs(path, exist_ok=True)
    save_checkpoint(os.path.join(path, BEST), {"model": GPT(cfg).state_dict(), "model_args": asdict(cfg),
                                               "iter_num": 0, "best_val_loss": 1e9})


def bench_generation(work):
    import socket
    import httpx
    from nanophi import synth
    from nanophi.llm import run_requests
    ckpt = os.path.join(work, "tiny")
    tiny_checkpoint(ckpt)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(work, "serve.log"), "w")
    srv = subprocess.Popen([sys.executable, "serve.py", f"--out_dir={ckpt}", f"--port={port}", "--max_batch=8",
                            "--access_log=False"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        say(f"\n## 2. Generation through serve.py (tiny random 2-layer 64-wide model, {gen_requests} requests x "
            f"{gen_tokens} tokens, openai.AsyncOpenAI)\n")
        say("| concurrency | seconds | requests/s | completion tok/s | vs concurrency 1 | load after |")
        say("|---|---|---|---|---|---|")
        base = None
        for c in (1, 4, 8):
            reqs = synth.build_requests("textbook", synth.load_seeds(), f"bench-c{c}", gen_requests, gen_tokens, 0.8,
                                        seed=c)
            path = os.path.join(work, f"gen_c{c}.jsonl")
            t0 = time.perf_counter()
            done, stats = run_requests(reqs, path, f"http://127.0.0.1:{port}/v1", "nanophi", concurrency=c,
                                       max_tokens=gen_tokens, temperature=0.8, progress=False)
            dt = time.perf_counter() - t0
            rate = stats["completion_tokens"] / dt
            base = base or rate
            say(f"| {c} | {dt:.1f} | {len(done) / dt:.2f} | {rate:,.0f} | {rate / base:.2f}x | {load()[13:]} |")
    finally:
        srv.terminate()
        srv.wait(10)
        log.close()


def prepare(task, out_dir, extra=()):
    r = subprocess.run([sys.executable, f"data/{task}/prepare.py", f"--out_dir={out_dir}", "--progress=False", *extra],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"prepare {task} failed:\n{r.stderr[-2000:]}")
    return json.load(open(os.path.join(out_dir, task, "meta.json")))


def train(data_dir, out_dir):
    args = [f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--tasks={'textbook': 1.0, 'code': 1.0}",
            "--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=128", "--batch_size=4",
            f"--max_iters={ablation_iters}", f"--eval_interval={ablation_iters}", "--eval_iters=1", "--plot=False",
            "--warmup_iters=10", "--learning_rate=2e-3", "--min_lr=2e-4", "--log_interval=50", "--seed=1337"]
    t0 = time.time()
    r = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"train failed:\n{r.stderr[-3000:]}")
    return time.time() - t0


@torch.no_grad()
def held_out(out_dir, data_dir, task, max_windows=64, block=128):
    """Masked loss and per-token exact match of a checkpoint on a task's val split, in block windows."""
    from nanophi.checkpoint import load_model
    from nanophi.files import TaskSplit
    model, _ = load_model("resume", out_dir, "cpu")
    split = TaskSplit(data_dir, task, "val")
    toks = torch.from_numpy(np.asarray(split.tokens, dtype=np.int64))
    mask = torch.from_numpy(np.asarray(split.mask, dtype=np.int64))
    loss_sum, hits, n = 0.0, 0, 0
    for w in range(min(max_windows, (len(toks) - 1) // block)):
        a = w * block
        x, y, m = toks[a:a + block][None], toks[a + 1:a + block + 1], mask[a + 1:a + block + 1].bool()
        logits = model(x)[0][0].float()
        loss_sum += torch.nn.functional.cross_entropy(logits[m], y[m], reduction="sum").item()
        hits += (logits[m].argmax(-1) == y[m]).sum().item()
        n += int(m.sum())
    return loss_sum / max(n, 1), hits / max(n, 1), n


def bench_ablation(work, model_dirs):
    raw, filt = os.path.join(work, "unfiltered"), os.path.join(work, "filtered")
    sizes = {}
    for task in ("textbook", "code"):
        m_raw = prepare(task, raw)
        m_filt = prepare(task, filt, [f"--quality_model={model_dirs[task]}", f"--min_quality={min_quality}"])
        sizes[task] = (m_raw["splits"]["train"]["tokens"], m_filt["splits"]["train"]["tokens"], m_filt["quality"])
    say(f"\n## 3. Ablation: equal tokens of unfiltered vs filtered (min_quality={min_quality}) textbook+code\n")
    say("| task | unfiltered train tokens | filtered train tokens | kept / dropped documents |")
    say("|---|---|---|---|")
    for task, (a, b, q) in sizes.items():
        say(f"| {task} | {a:,} | {b:,} | {q['kept']:,} / {q['dropped']:,} |")
    tokens = ablation_iters * 4 * 128
    say(f"\nBoth arms: 2 layers, 64 wide, {ablation_iters} iterations x 4 x 128 = {tokens:,} tokens; held-out set = "
        f"the unfiltered val split (64 windows of 128 tokens per task at most).\n")
    say("| arm | train s | textbook val loss | textbook token exact match | code val loss | code token exact match |")
    say("|---|---|---|---|---|---|")
    for name, data in (("unfiltered", raw), ("filtered", filt)):
        ckpt = os.path.join(work, f"out-{name}")
        secs = train(data, ckpt)
        cells = []
        for task in ("textbook", "code"):
            loss, acc, n = held_out(ckpt, raw, task)
            cells += [f"{loss:.3f}", f"{acc:.3f}"]
        say(f"| {name} | {secs:.0f} | " + " | ".join(cells) + " |")


def main():
    t0 = time.time()
    say(f"# bench_quality ({os.cpu_count()} CPUs, {load()})\n")
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as work:
        model_dirs, docs = reference_classifiers(work)
        bench_scoring(model_dirs["textbook"], docs)
        if not skip_generation:
            bench_generation(work)
        if not skip_ablation:
            bench_ablation(work, model_dirs)
    say(f"\ntotal {time.time() - t0:.0f} s, {load()}")
    if out:
        from nanophi.files import write_text_atomic
        write_text_atomic(out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
