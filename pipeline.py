"""
The main job on a fresh machine, end to end on CPU (no GPU, no model hub). It rehearses the Colab
path (finetune a pretrained GPT-2 from its transformers directory) with a small stand-in for GPT-2:

    python pipeline.py

1. prepare the offline multitask corpus                  data/prepare_all.py
2. pretrain the base, a stand-in for GPT-2, on the
   textbook, code, math, logic and noun chains           train.py config/nanophi_cpu_base.py
3. export it to a transformers directory                 export.py
4. finetune from that directory on the whole mixture
   (init_from=<dir>, as finetune_nanophi does with
   gpt2-medium)                                          train.py config/nanophi_cpu.py
   and finish it on mostly the showcase's noun chains,
   embeddings frozen                                     train.py config/nanophi_cpu_chain.py
5. compare base and finetuned: per-task loss, exact
   match, how often an answer stops at end-of-text      eval.py --compare_with=<base dir>
6. the seeds' showcase prompts on held-out variants
   (new numbers, new nouns): base vs finetuned, ✓/✗     nanophi/showcase.py
7. print one greedy sample per tag                       sample.py --tag=... (its main(), in this process)

Each step is the same command a user would type, run here one after another with its output
shown as it comes; a failing step stops the job with its exit status. Settings below can be
overridden like any script's (--key=value), e.g. --max_iters=100 for a quicker look.
"""
import contextlib
import importlib
import io
import os
import subprocess
import sys
import time

from configurator import configure
from nanophi import showcase
from nanophi.checkpoint import load_for_inference
from nanophi.tasks import SAMPLES

out_dir = "out-nanophi-cpu"           # the finetuned model (after the finish)
mix_dir = ""                          # the finetune before the finish; '' = <out_dir>-mix
base_dir = "out-nanophi-cpu-base"     # the pretrained stand-in; its transformers export goes to <base_dir>/hf
base_config = "config/nanophi_cpu_base.py"
config = "config/nanophi_cpu.py"
chain_config = "config/nanophi_cpu_chain.py"
data_dir = "data"
prepare = True          # False: reuse data/ prepared by an earlier run
pretrain = True         # False: reuse the base in base_dir
overwrite = False       # True: a new run replaces the trained runs in base_dir, mix_dir and out_dir (else train.py refuses)
max_iters = 0           # 0 = the configs'; else each training run's (pretraining, finetune, finish)
eval_limit = 20         # questions / documents / HumanEval problems per task in the evaluation
sample_tokens = 60      # new tokens per sample
showcase_n = 20         # held-out prompts per showcase family
configure(globals())

PY = sys.executable
BASE_HF = os.path.join(base_dir, "hf")
MIX_DIR = mix_dir or os.path.normpath(out_dir) + "-mix"


def run(title, cmd):
    print(f"\n=== {title}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit(f"pipeline: step '{title}' failed with exit status {r.returncode}")
    return time.time() - t0


def sample_each_tag():
    import sample  # sample.py itself, in this process: seven interpreter starts cost ~30 s on 2 cores
    for task in SAMPLES:  # one greedy sample per tag: a reproducible printout
        tag = task.tag.strip("[]")
        print(f"\n--- [{tag}] {task.sample!r}", flush=True)
        argv = [f"--out_dir={out_dir}", f"--tag={tag}", f"--start={task.sample}", "--temperature=0",
                f"--max_new_tokens={sample_tokens}", "--echo=True", "--no_repeat_ngram_size=4"]
        if task.system:
            argv.append(f"--system={task.system}")
        importlib.reload(sample)  # every setting back to its default, as a fresh `python sample.py` has
        chatter = io.StringIO()  # settings chatter only shown on failure
        try:
            with contextlib.redirect_stderr(chatter):
                sample.main(argv)
        except Exception as e:  # noqa: BLE001 (any failure ends the job, with what sample.py said)
            sys.exit(f"{chatter.getvalue()}\npipeline: sampling [{tag}] failed: {type(e).__name__}: {e}")
        sys.stdout.flush()


def show_showcase():
    print(f"\n=== showcase: the seeds' prompt families on {showcase_n} held-out variants each, greedy "
          "(new numbers / new nouns; nanophi/showcase.py)", flush=True)
    models = {"base": load_for_inference(BASE_HF, out_dir, device="cpu", dtype="float32").model,
              "finetuned": load_for_inference("resume", out_dir, device="cpu", dtype="float32").model}
    print(showcase.report(showcase.run(models, n=showcase_n)), flush=True)


iters = [f"--max_iters={max_iters}"] if max_iters else []
data = [f"--data_dir={data_dir}"]
replace = ["--overwrite=True"] if overwrite else []  # for the three train.py runs
timings = {}
t_start = time.time()
if prepare:
    timings["prepare"] = run("prepare the offline corpus", [PY, "data/prepare_all.py", f"--out_dir={data_dir}"])
if pretrain:
    timings["pretrain"] = run("pretrain the base (a stand-in for GPT-2) on textbook, code, math, logic and noun chains",
                              [PY, "train.py", base_config, f"--out_dir={base_dir}"] + data + iters + replace)
    timings["export"] = run("export the base to a transformers directory",
                            [PY, "export.py", f"--out_dir={base_dir}", f"--export_dir={BASE_HF}"])
timings["finetune"] = run("finetune from that directory on the task mixture",
                          [PY, "train.py", config, f"--init_from={BASE_HF}", f"--out_dir={MIX_DIR}"] + data + iters + replace)
timings["finish"] = run("finish on the noun chains, token embeddings frozen",
                        [PY, "train.py", chain_config, f"--init_from={os.path.join(MIX_DIR, 'ckpt.pt')}",
                         f"--out_dir={out_dir}"] + data + iters + replace)
timings["eval"] = run("evaluate: base against finetuned",
                      [PY, "eval.py", f"--out_dir={out_dir}", f"--compare_with={BASE_HF}", f"--limit={eval_limit}"] + data)
t0 = time.time()
show_showcase()
timings["showcase"] = time.time() - t0
t0 = time.time()
sample_each_tag()
timings["samples"] = time.time() - t0
total = time.time() - t_start
print("\n=== pipeline done: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f", total {total / 60:.1f} min")
print(f"base (stand-in for GPT-2): {BASE_HF}; finetuned checkpoint and logs: {out_dir}/; "
      f"comparison table: {os.path.join(out_dir, 'eval.md')}")
NEXT = [(f'python sample.py --out_dir={out_dir} --tag=Math --start="What is 12 + 30?"', "one prompt, any tag"),
        (f"python sample.py --out_dir={out_dir} --chat=True", "chat in the terminal"),
        (f"python serve.py --out_dir={out_dir}", "OpenAI-compatible API and web page"),
        (f"python eval.py --out_dir={out_dir} --compare_with={BASE_HF}", "the whole evaluation, no limit"),
        (f"python export.py --out_dir={out_dir}", f"a transformers folder in {out_dir}/hf")]
width = max(len(cmd) for cmd, _ in NEXT) + 2
print("\nnext:\n" + "\n".join(f"  {cmd.ljust(width)}# {why}" for cmd, why in NEXT)
      + "\n  on a GPU (Colab, docs/colab.ipynb): the same steps from gpt2-medium with config/finetune_nanophi.py")
