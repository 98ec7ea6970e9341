"""
A diversity report for any task's documents or a generated set, side by side (nanophi/diversity.py).

    python data/diversity.py --sets=textbook:offline,textbook:data/synth/textbooks.jsonl
    python data/diversity.py --sets=code:offline,code:data/synth/exercises.jsonl --out_dir=data/reports/code_diversity

Each set is <task>:<source> (source as data/<task>/prepare.py's --source). Writes diversity.md and lengths.png.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from configurator import ConfigError, configure, run_main  # noqa: E402
from nanophi import diversity, quality  # noqa: E402
from nanophi.records import DataError  # noqa: E402

# -----------------------------------------------------------------------------
sets = "textbook:offline"   # comma-separated <task>:<source>
max_docs = 3000             # per set (0 = all)
clusters = 20               # KMeans clusters
seed = 1337
out_dir = ""                # default data/reports/diversity
# -----------------------------------------------------------------------------


def main(argv):
    configure(globals(), argv)
    chosen = {}
    for part in [p.strip() for p in sets.split(",") if p.strip()]:
        if ":" not in part:
            raise ConfigError(f"sets: {part!r} must be <task>:<source>, e.g. textbook:offline")
        task, source = part.split(":", 1)
        texts = [t for _, t in quality.task_documents(task, source, max_docs)]
        if len(texts) < 2:
            raise DataError(f"sets: {part} has {len(texts)} documents; need at least 2")
        chosen[part] = texts
    if not chosen:
        raise ConfigError("sets is empty")
    out = out_dir or os.path.join(quality.ROOT, "data", "reports", "diversity")
    print(diversity.report(chosen, out, clusters, seed))
    print(f"wrote {out}/diversity.md and lengths.png")


if __name__ == "__main__":
    run_main(main, sys.argv[1:], errors=[(DataError, 2)])
