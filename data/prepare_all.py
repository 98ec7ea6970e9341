"""
Prepare the whole multitask mix in one command:

    python data/prepare_all.py                                  # offline: every task into data/<task>/ (no internet)
    python data/prepare_all.py --tasks="['math','logic']" --max_docs=2000
    python data/prepare_all.py --source=hub --budget=config/finetune_nanophi.py --skip_unavailable=True
                                                                # the Colab recipe: hub data sized to that run

Runs each data/<task>/prepare.py in this process with the shared settings below and prints one
summary table. A task whose offline source is missing (a hand-written file) is reported and
skipped; any other error is reported in one line and makes the exit status 1 after the other
tasks ran. With --source=hub, tasks that have no hub dataset (excerpt, symposium) use their
offline source, and those in offline_too add it to their hub datasets.

--budget=<train config>: per-source caps that supply what that run trains on (iterations x batch x
block x accumulation, shared by mixture weight) plus the validation split, with a margin for what
dedup and routing drop, never the whole dataset; the plan (documents, tokens, download) is printed
before any download starts. The estimates per document are in each source's Hub(...) line.
"""
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from nanophi import dataprep, records  # noqa: E402
from configurator import ConfigError, configure  # noqa: E402
from nanophi.tasks import GENERATED_TASKS, TASK_NAMES  # noqa: E402

tasks = list(TASK_NAMES)  # every task, in preparation order
source = "offline"      # offline | hub
out_dir = HERE
seed = 1337
max_docs = 0            # cap on records per source for every task (0 = each task's default: all)
num_generated = 20000   # math/logic/chain generated training items
budget = ""             # a train config (config/finetune_nanophi.py): size per-source caps to the tokens it trains on
margin = 1.3            # documents read per document needed: dedup, routing and decontamination drop some
val_fraction = 0.05
# with source=hub these tasks add their offline source: the hand-written chat/roleplay sets, and the generated
# math/logic items in the format of eval.py's held-out questions (Open-Platypus has only a few thousand logic rows)
offline_too = ["math", "logic", "chat", "roleplay"]
skip_unavailable = False  # a gated/missing/unreachable hub dataset is reported and skipped; the task's other sources run
hub_root = "hf://datasets"  # or a local mirror <dir>/<owner>/<name>/<file>
progress = True

# train.py's defaults for the settings a budget reads (a config file only sets what it changes)
TRAIN_DEFAULTS = dict(max_iters=1000, batch_size=8, block_size=256, gradient_accumulation_steps=1, eval_iters=10,
                      tasks={"textbook": 1.0, "code": 1.0, "math": 1.0, "logic": 1.0, "roleplay": 1.0, "chat": 1.0,
                             "excerpt": 1.0})


def read_budget(path):
    """Tokens per task that the train config at path trains on, and the val tokens it evaluates on."""
    ns = dict(TRAIN_DEFAULTS)
    try:
        exec(compile(open(path).read(), path, "exec"), ns)
    except OSError as e:
        raise ConfigError(f"budget={path!r}: {e.strerror}") from None
    total = ns["max_iters"] * ns["batch_size"] * ns["block_size"] * ns["gradient_accumulation_steps"]
    weights = {t: float(w) for t, w in ns["tasks"].items() if w > 0}
    per_task = {t: total * w / sum(weights.values()) for t, w in weights.items()}
    val_min = ns["eval_iters"] * ns["batch_size"] * ns["block_size"]
    return total, per_task, val_min


def plan_caps(task, hubs, need_tokens, val_min, val_fraction, margin):
    """{source: (documents to read, estimated new tokens, estimated bytes)} for one task. Smaller sources
    go first and the rest of the need is shared among the bigger ones; a copy (copy_of) reads as many
    documents as its original and adds nothing; a source smaller than its share is read whole."""
    need = max(need_tokens / (1 - val_fraction), val_min / val_fraction)  # train share + a val split eval can use
    plan, originals = {}, [h for h in hubs if not h.copy_of and not h.whole]
    left = need
    for k, h in enumerate(sorted(originals, key=lambda h: h.rows * h.tokens_per_doc)):
        share = left / (len(originals) - k)
        docs = math.ceil(share / h.tokens_per_doc * margin)
        docs = min(docs, h.rows) if h.rows else docs
        tokens = docs * h.tokens_per_doc / margin
        plan[h.repo] = (docs, tokens, docs * h.bytes_per_doc)
        left = max(left - tokens, 0)
    for h in hubs:
        if h.whole:
            plan[h.repo] = (h.rows, 0, h.rows * h.bytes_per_doc)
        elif h.copy_of:
            docs = plan.get(h.copy_of, (h.rows, 0, 0))[0]
            plan[h.repo] = (docs, 0, docs * h.bytes_per_doc)
    return plan, need, left


def print_plan(total, rows):
    print(f"\nbudget: the run trains on {total / 1e6:.1f}M tokens; per-source caps (estimates, before downloading):")
    print("| task | source | documents (cap) | est. tokens | est. download |")
    print("|---|---|---:|---:|---:|")
    for task, repo, docs, tokens, nbytes in rows:
        print(f"| {task} | {repo} | {docs:,} | {tokens / 1e6:.1f}M | {nbytes / 1e6:,.0f} MB |")
    print(f"| all | | {sum(r[2] for r in rows):,} | {sum(r[3] for r in rows) / 1e6:.1f}M "
          f"| {sum(r[4] for r in rows) / 1e6:,.0f} MB |\n", flush=True)


def budget_caps(g):
    """{task: {source: cap}} for the run in g['budget'], printed as a plan."""
    total, per_task, val_min = read_budget(g["budget"])
    caps, rows = {}, []
    for task in g["tasks"]:
        hubs = [s.hub for s in schemas_of(task) if s.hub]
        if not hubs or task not in per_task:
            continue
        plan, need, short = plan_caps(task, hubs, per_task[task], val_min, g["val_fraction"], g["margin"])
        caps[task] = {repo: docs for repo, (docs, _, _) in plan.items()}
        gated = {h.repo for h in hubs if h.gated}
        rows += [(task, repo + (" (may be gated)" if repo in gated else ""), *v) for repo, v in plan.items()]
        if short > 0.05 * need and task in g["offline_too"]:
            print(f"budget: {task}: its hub rows are routed Open-Platypus rows (not counted on); its offline "
                  f"source is prepared too")
        elif short > 0.05 * need:
            print(f"budget: {task}: the hub sources hold about {(need - short) / 1e6:.1f}M of the {need / 1e6:.1f}M "
                  f"tokens the run draws; training repeats them ({need / max(need - short, 1):.1f} epochs)")
    print_plan(total, rows)
    return caps


def schemas_of(task):
    mod = records.load_prepare(task)
    return mod.SCHEMAS


def task_args(task, g, caps):
    src = g["source"]
    if src == "hub" and not any(s.hub for s in schemas_of(task)):
        src = "offline"  # excerpt, symposium: no hub dataset
    elif src == "hub" and task in g["offline_too"]:
        src = "hub,offline"
    args = [f"--source={src}", f"--out_dir={g['out_dir']}", f"--seed={g['seed']}", f"--max_docs={g['max_docs']}",
            f"--progress={g['progress']}", f"--val_fraction={g['val_fraction']}",
            f"--skip_unavailable={g['skip_unavailable']}", f"--hub_root={g['hub_root']}"]
    if task in caps:
        args.append(f"--source_caps={caps[task]!r}")
    if task in GENERATED_TASKS:
        args.append(f"--num_generated={g['num_generated']}")
    return args


def main(argv=None):
    g = {k: globals()[k] for k in ("tasks", "source", "out_dir", "seed", "max_docs", "num_generated", "budget", "margin",
                                   "val_fraction", "offline_too", "skip_unavailable", "hub_root", "progress")}
    configure(g, argv)
    t0 = time.time()
    caps = budget_caps(g) if g["budget"] else {}
    metas, problems = [], []
    for task in g["tasks"]:
        try:
            metas.append(records.load_prepare(task).main(task_args(task, g, caps)))
        except records.SourceMissing as e:
            problems.append((task, "skipped", str(e)))
        except (records.DataError, ValueError, OSError) as e:
            problems.append((task, "FAILED", f"{type(e).__name__}: {e}"))
    print(f"\nprepared {len(metas)} of {len(g['tasks'])} tasks into {g['out_dir']} in {time.time() - t0:.1f} s")
    print(dataprep.summary_table(metas))
    for m in metas:
        for name, why in m.get("unavailable", {}).items():
            print(f"{m['task']}: skipped {name}: {why}")
    for task, what, msg in problems:
        print(f"{task}: {what}: {msg}")
    return metas, problems


if __name__ == "__main__":
    try:
        _, problems = main()
    except (records.DataError, ConfigError) as e:
        sys.exit(f"error: {e}")
    sys.exit(1 if any(what == "FAILED" for _, what, _ in problems) else 0)
