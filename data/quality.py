"""
Quality scoring for any task's documents (nanophi/quality.py does the work; docs/quality.md has the loop).

    # 1. labels: an LLM judge through any OpenAI-compatible endpoint (key from $OPENAI_API_KEY) ...
    python data/quality.py label --task=textbook --labels_from=judge --base_url=http://127.0.0.1:8000/v1 --model=nanophi --judge_docs=200
    #    ... or reference positives against random negatives (DCLM style), or your own file
    python data/quality.py label --task=textbook --labels_from=reference --positives=handwritten,python-docs
    # 2. classifier (held-out accuracy/F1/AUC printed and saved in metrics.json)
    python data/quality.py train --task=textbook                  # or --labels=my_labels.jsonl
    # 3. score every document: scores.jsonl, score_hist.png, top_bottom.md
    python data/quality.py score --task=textbook
    # 4. filter while preparing
    python data/textbook/prepare.py --quality_model=data/quality/textbook --min_quality=0.5

Outputs go to data/quality/<task>/ (out_dir). The judge's replies are kept in judge_replies.jsonl,
append-only: an interrupted or failed labelling run resumes where it stopped.
"""
import os
import random
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
from configurator import ConfigError, configure, run_main  # noqa: E402
from nanophi import quality  # noqa: E402
from nanophi.records import DataError  # noqa: E402
from nanophi.files import write_jsonl_atomic  # noqa: E402
from nanophi.llm import EndpointError, api_key_for, run_requests, usage_totals  # noqa: E402

COMMANDS = ("label", "train", "score")
# -----------------------------------------------------------------------------
task = "textbook"           # data/<task>/prepare.py whose documents are labelled / scored
source = "offline"          # as prepare.py's --source (offline | hub | a file)
out_dir = ""                # default data/quality/<task>
judge_docs = 200            # label: documents sent to the judge (a seeded sample of the task's)
max_docs = 0                # score: at most this many documents (0 = all)
seed = 1337
labels_from = "judge"       # label: judge | reference
# judge
base_url = "http://127.0.0.1:8000/v1"
model = "nanophi"
api_key_env = ""            # "": $OPENAI_API_KEY, sent only to https://api.openai.com; NAME: send $NAME to base_url
prompt = quality.JUDGE_PROMPT
concurrency = 4
timeout = 120.0             # seconds per request
max_retries = 3             # the openai client's retries with backoff on 429/5xx/connection errors
judge_max_tokens = 256
judge_chars = 4000          # characters of each document shown to the judge (fit the judge's context)
threshold = 3               # score >= threshold is a positive label (FineWeb-Edu used 3)
# reference
positives = "handwritten,python-docs"  # comma-separated: handwritten | python-docs | file.jsonl with "text"
negatives = "task"          # task: a random sample of the task's documents, or a .jsonl file with "text"
neg_ratio = 1.0             # negatives per positive
# train
labels = ""                 # a labels JSONL ({"text", "label"} or {"text", "score"}); default <out_dir>/labels.jsonl
features = "hashing"        # hashing (offline) or a sentence-transformers model name / local directory
classifier = "logreg"       # logreg | forest
# score
batch_size = 512
progress = True
# -----------------------------------------------------------------------------


def label():
    path = os.path.join(out_dir, "labels.jsonl")
    if labels_from == "reference":
        pos = quality.reference_positives(positives)
        neg_docs = quality.task_documents(task, source) if negatives == "task" else quality.text_file(negatives)
        texts, labs = quality.reference_labels(pos, [t for _, t in neg_docs], seed, neg_ratio)
        rows = [{"text": t, "label": y} for t, y in zip(texts, labs)]
        print(f"reference labels: {sum(labs)} positives ({positives}), {len(labs) - sum(labs)} negatives ({negatives})")
    else:
        docs = list(quality.task_documents(task, source))
        if judge_docs and len(docs) > judge_docs:
            docs = random.Random(seed).sample(docs, judge_docs)
        requests = quality.judge_requests(docs, model, prompt, judge_max_tokens, max_chars=judge_chars)
        replies = os.path.join(out_dir, "judge_replies.jsonl")
        try:
            done, stats = run_requests(requests, replies, base_url, model, *api_key_for(base_url, api_key_env),
                                       concurrency, timeout, max_retries, judge_max_tokens, 0.0, progress)
        except EndpointError as e:
            kept = sum(1 for _ in open(replies)) if os.path.exists(replies) else 0
            raise EndpointError(f"{e}\n{kept} replies kept in {replies}; rerun the same command to resume") from None
        records = [done[r["key"]] for r in requests if r["key"] in done]
        rows, unparsed = quality.judge_labels(records, threshold)
        u = usage_totals(records)
        print(f"judge: {len(requests)} documents, {stats['already_done']} already judged, {stats['asked']} asked, "
              f"{stats['failed']} failed requests, {unparsed} replies without a parseable score, {len(rows)} labelled "
              f"({sum(r['label'] for r in rows)} with score >= {threshold}); tokens {u['prompt_tokens']:,} in, "
              f"{u['completion_tokens']:,} out")
        for err in stats["errors"]:
            print(f"  failed: {err}")
        hist = {s: sum(1 for r in rows if r["score"] == s) for s in range(6)}
        print("score counts: " + ", ".join(f"{s}: {n}" for s, n in hist.items()))
    write_jsonl_atomic(path, rows)
    print(f"wrote {path}")


def train():
    path = labels or os.path.join(out_dir, "labels.jsonl")
    texts, labs = quality.read_labels(path, threshold)
    m = quality.train(texts, labs, out_dir, features, classifier, seed, where=path, extra={"labels": path})
    print(f"held-out ({m['n_test']} of {m['n_train'] + m['n_test']} documents): accuracy {m['accuracy']:.3f} "
          f"(majority class {m['majority_baseline']:.3f}), F1 {m['f1']:.3f}, AUC {m['auc']}")
    print(f"wrote {out_dir}/model.joblib and metrics.json")


def score():
    scorer = quality.Scorer(out_dir)
    docs = quality.task_documents(task, source, max_docs)
    s = quality.score_documents(docs, scorer, out_dir, batch_size, progress=progress, title=f"{task} ({source})")
    print(f"scored {s['documents']:,} documents: mean {s['mean']}, quantiles {s['quantiles']}, "
          f"at or above 0.25/0.5/0.75: {s['above']}")
    print(f"wrote {s['scores']}, {s['histogram']}, {s['page']}")


def main(argv):
    global out_dir
    if not argv or argv[0] not in COMMANDS:
        raise ConfigError(f"first argument must be one of {', '.join(COMMANDS)} (e.g. python data/quality.py train)")
    configure(globals(), argv[1:])
    out_dir = out_dir or os.path.join(quality.ROOT, "data", "quality", task)
    os.makedirs(out_dir, exist_ok=True)
    if labels_from not in ("judge", "reference"):
        raise ConfigError(f"labels_from={labels_from!r}: use 'judge' or 'reference' (a file goes to train --labels=)")
    if not 0 <= threshold <= 5:
        raise ConfigError(f"threshold={threshold}: a score on the 0-5 scale")
    {"label": label, "train": train, "score": score}[argv[0]]()


if __name__ == "__main__":
    run_main(main, sys.argv[1:], errors=[(DataError, 2), (EndpointError, 1)])
