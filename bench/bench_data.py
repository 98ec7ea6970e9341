"""
Data preparation throughput and peak memory, measured side by side in one run:

  1. the whole offline mix (data/prepare_all.py) into a temporary directory
  2. a synthetic JSONL source streamed from disk at size S and 10*S (memory should stay flat)
  3. the same S source with 1 and 2 tokenizer threads

Each measurement runs in its own Python process, which reports its own peak RSS (getrusage).

    python bench/bench_data.py                 # S = 8 MB
    python bench/bench_data.py --size_mb=20 --out=/tmp/readme_parts/data_bench.md
"""
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from nanophi import records  # noqa: E402
from configurator import configure  # noqa: E402

size_mb = 8
scale = 10
out = ""          # also write the Markdown table here
skip_mix = False


def child(spec):
    """Run one preparation in this (fresh) process; print a JSON line with its figures."""
    sys.path.insert(0, os.path.join(ROOT, "data"))
    t0 = time.time()
    if spec["what"] == "mix":
        import prepare_all
        metas, problems = prepare_all.main([f"--out_dir={spec['out_dir']}", "--progress=False"])
    else:
        mod = records.load_prepare("textbook")
        metas = [mod.main([f"--source={spec['source']}", f"--out_dir={spec['out_dir']}", "--progress=False",
                           f"--num_threads={spec['threads']}", f"--near_dedup={spec.get('near', True)}"])]
    seconds = time.time() - t0
    docs = sum(m["records"] for m in metas)
    tokens = sum(m["splits"][s]["tokens"] for m in metas for s in ("train", "val"))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB
    print("RESULT " + json.dumps({"docs": docs, "tokens": tokens, "seconds": seconds, "peak_rss_mb": rss_mb}))


def measure(spec):
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child=" + json.dumps(spec)],
                       capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"bench child failed: {r.stderr[-2000:]}")
    return json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[7:])


def synthetic_jsonl(path, mb, seed=0):
    """Unique pseudo-English documents (~1 KB each) in the tiny-textbooks schema."""
    rng = random.Random(seed)
    vocab = [("".join(rng.choice("etaoinshrdlucmfwypvbgk") for _ in range(rng.randint(2, 9)))) for _ in range(5000)]
    n = 0
    with open(path, "w") as f:
        while f.tell() < mb * 1e6:
            words = rng.choices(vocab, k=rng.randint(120, 200))
            f.write(json.dumps({"text": "web source", "textbook": " ".join(words).capitalize() + f". Document {n}."}) + "\n")
            n += 1
    return n


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not skip_mix:
            r = measure({"what": "mix", "out_dir": os.path.join(tmp, "mix")})
            rows.append(("offline mix (prepare_all, 8 tasks)", r))
        small, big = os.path.join(tmp, "s.jsonl"), os.path.join(tmp, "b.jsonl")
        n_s, n_b = synthetic_jsonl(small, size_mb), synthetic_jsonl(big, size_mb * scale, seed=1)
        for label, src, threads, near in (
                (f"synthetic JSONL {size_mb} MB ({n_s:,} docs), 2 threads", small, 2, True),
                (f"synthetic JSONL {size_mb} MB ({n_s:,} docs), 1 thread", small, 1, True),
                (f"synthetic JSONL {size_mb} MB ({n_s:,} docs), 1 thread, no near-dup", small, 1, False),
                (f"synthetic JSONL {size_mb * scale} MB ({n_b:,} docs), 1 thread", big, 1, True),
                (f"synthetic JSONL {size_mb * scale} MB ({n_b:,} docs), 1 thread, no near-dup", big, 1, False)):
            rows.append((label, measure({"what": "file", "source": src, "threads": threads, "near": near,
                                         "out_dir": os.path.join(tmp, "f")})))
    cpu = platform.processor() or platform.machine()
    lines = [f"Machine: {os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}; "
             f"every row is a fresh process, peak RSS from getrusage.", "",
             "| run | documents | tokens | seconds | docs/s | tokens/s | peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label} | {r['docs']:,} | {r['tokens']:,} | {r['seconds']:.1f} | {r['docs'] / r['seconds']:,.0f} "
                     f"| {r['tokens'] / r['seconds']:,.0f} | {r['peak_rss_mb']:.0f} |")
    t2, t1, s_nn, b, b_nn = [r for _, r in rows[-5:]]
    lines += ["", f"- {scale}x the source size, near-dup on: peak RSS x{b['peak_rss_mb'] / t1['peak_rss_mb']:.2f} "
                  f"({t1['peak_rss_mb']:.0f} -> {b['peak_rss_mb']:.0f} MB: the MinHash LSH index grows by about "
                  f"{(b['peak_rss_mb'] - t1['peak_rss_mb']) * 1024 / max(b['docs'] - t1['docs'], 1):.1f} KB per document)",
              f"- {scale}x the source size, near-dup off: peak RSS x{b_nn['peak_rss_mb'] / s_nn['peak_rss_mb']:.2f} "
              f"({s_nn['peak_rss_mb']:.0f} -> {b_nn['peak_rss_mb']:.0f} MB; only an 8-byte hash per document stays)",
              f"- 2 tokenizer threads vs 1: tokens/s x{(t2['tokens'] / t2['seconds']) / (t1['tokens'] / t1['seconds']):.2f}"]
    table = "\n".join(lines)
    print(table)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("--_child="):
        child(json.loads(sys.argv[1][len("--_child="):]))
    else:
        configure(globals())
        main()
