"""
Prepare the whole offline multitask mix in one command (no internet needed):

    python data/prepare_all.py                                  # every task into data/<task>/
    python data/prepare_all.py --tasks="['math','logic']" --max_docs=2000

Runs each data/<task>/prepare.py in this process with the shared settings below and prints one
summary table. A task whose offline source is missing (a hand-written file) is reported and
skipped; any other error is reported and makes the exit status 1 after the other tasks ran.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from nanophi import dataprep  # noqa: E402
from configurator import configure  # noqa: E402
from nanophi.tasks import GENERATED_TASKS, TASK_NAMES  # noqa: E402

tasks = list(TASK_NAMES)  # every task, in preparation order
source = "offline"
out_dir = HERE
seed = 1337
max_docs = 0            # cap on records per source for every task (0 = each task's default: all)
num_generated = 20000   # math/logic generated training items
progress = True




def main(argv=None):
    g = {k: globals()[k] for k in ("tasks", "source", "out_dir", "seed", "max_docs", "num_generated", "progress")}
    configure(g, argv)
    t0 = time.time()
    metas, problems = [], []
    for task in g["tasks"]:
        args = [f"--source={g['source']}", f"--out_dir={g['out_dir']}", f"--seed={g['seed']}",
                f"--max_docs={g['max_docs']}", f"--progress={g['progress']}"]
        if task in GENERATED_TASKS:
            args.append(f"--num_generated={g['num_generated']}")
        try:
            metas.append(dataprep.load_prepare(task).main(args))
        except dataprep.SourceMissing as e:
            problems.append((task, "skipped", str(e)))
        except (dataprep.DataError, ValueError, OSError) as e:
            problems.append((task, "FAILED", f"{type(e).__name__}: {e}"))
    print(f"\nprepared {len(metas)} of {len(g['tasks'])} tasks into {g['out_dir']} in {time.time() - t0:.1f} s")
    print(dataprep.summary_table(metas))
    for task, what, msg in problems:
        print(f"{task}: {what}: {msg}")
    return metas, problems


if __name__ == "__main__":
    _, problems = main()
    sys.exit(1 if any(what == "FAILED" for _, what, _ in problems) else 0)
