"""
The main job on a fresh machine, end to end on CPU (no GPU, no model hub):

    python pipeline.py

1. prepare the offline multitask corpus          data/prepare_all.py
2. train a small GPT from scratch on it           train.py config/nanophi_cpu.py
3. evaluate per task (loss, exact match, code)    eval.py
4. print one greedy sample per tag                sample.py --tag=...

Each step is the same command a user would type, run here one after another with its output
shown as it comes; a failing step stops the job with its exit status. Settings below can be
overridden like any script's (--key=value), e.g. --max_iters=200 for a quicker look.
"""
import os
import subprocess
import sys
import time

from configurator import configure
from nanophi.tasks import SAMPLES

out_dir = "out-nanophi-cpu"
config = "config/nanophi_cpu.py"
prepare = True          # False: reuse data/ prepared by an earlier run
max_iters = 0           # 0 = the config's
eval_limit = 40         # questions / documents / HumanEval problems per task in the evaluation
sample_tokens = 60      # new tokens per sample
configure(globals())

PY = sys.executable


def run(title, cmd):
    print(f"\n=== {title}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit(f"pipeline: step '{title}' failed with exit status {r.returncode}")
    return time.time() - t0


timings = {}
t_start = time.time()
if prepare:
    timings["prepare"] = run("prepare the offline corpus", [PY, "data/prepare_all.py"])
train_cmd = [PY, "train.py", config, f"--out_dir={out_dir}"] + ([f"--max_iters={max_iters}"] if max_iters else [])
timings["train"] = run("train", train_cmd)
timings["eval"] = run("evaluate", [PY, "eval.py", f"--out_dir={out_dir}", f"--limit={eval_limit}"])
t0 = time.time()
for task in SAMPLES:  # one greedy sample per tag: a reproducible printout
    tag = task.tag.strip("[]")
    print(f"\n--- [{tag}] {task.sample!r}", flush=True)
    cmd = [PY, "sample.py", f"--out_dir={out_dir}", f"--tag={tag}", f"--start={task.sample}", "--temperature=0",
           f"--max_new_tokens={sample_tokens}", "--echo=True", "--no_repeat_ngram_size=4"]
    if task.system:
        cmd.append(f"--system={task.system}")
    r = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)  # settings chatter only shown on failure
    if r.returncode != 0:
        sys.exit(f"{r.stderr}\npipeline: sampling [{tag}] failed with exit status {r.returncode}")
timings["samples"] = time.time() - t0
total = time.time() - t_start
print("\n=== pipeline done: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f", total {total / 60:.1f} min")
print(f"checkpoint and logs in {out_dir}/ (eval table: {os.path.join(out_dir, 'eval.md')})")
print("next (sample, serve, eval and export find the newest trained out*/ folder by themselves):\n"
      f"  python sample.py --out_dir={out_dir} --chat=True         # chat in the terminal\n"
      f"  python serve.py --out_dir={out_dir}                      # OpenAI-compatible API and web page\n"
      f"  python export.py --out_dir={out_dir}                     # transformers folder in {out_dir}/hf")
