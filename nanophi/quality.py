"""
Educational-value scoring for any task's documents, as phi-1 and FineWeb-Edu did it: label a sample
(an LLM judge, a user's labels file, or reference positives against random negatives as DCLM did),
train a small classifier on cheap features, score every document, filter at prepare time.

    labels -> features (hashed words+bigrams offline, or sentence-transformers) -> scikit-learn classifier
           -> model.joblib + metrics.json -> scores.jsonl, histogram PNG, top/bottom Markdown
           -> data/<task>/prepare.py --quality_model=<dir> --min_quality=0.5

A document's text for scoring is its first rendered example without the task tag (doc_text), the
same in labelling, scoring and preparation.
"""
import glob
import heapq
import json
import os
import random
import re
import sys
import types

from nanophi import records, textformat
from nanophi.features import HASHING, MAX_CHARS, Features
from nanophi.records import DataError
from nanophi.files import atomic_file, jsonl_line, write_json_atomic, write_text_atomic

ROOT = records.ROOT
JUDGE_PROMPT = os.path.join(ROOT, "data", "quality", "judge_prompt.md")
_TAG = re.compile(r"^\s*(" + "|".join(re.escape(t) for t in textformat.TAGS.values()) + r")\s?")


# ---------------------------------------------------------------------------------------------
# documents

def doc_text(examples):
    """The text a document is judged by: its first example rendered, the task tag removed."""
    return _TAG.sub("", textformat.render_text(examples[0]), count=1).strip()


def task_sources(task, source="offline"):
    """The [Source] data/<task>/prepare.py would read for --source=source."""
    mod = records.load_prepare(task)
    extra = {"styles": list(mod.styles)} if hasattr(mod, "styles") else {}
    cfg = types.SimpleNamespace(**{**records.DEFAULTS, **extra, "source": source})
    schemas = mod.schemas(records.chat_styles(cfg.styles)) if hasattr(mod, "schemas") else mod.SCHEMAS
    offline = mod.offline(cfg) if "offline" in source.split(",") else []
    return records.resolve_sources(source, schemas, offline, cfg.hub_root, "")


def task_examples(task, source="offline", max_docs=0):
    """(where, examples) of a task's documents; records that do not render are skipped (prepare reports them)."""
    n = 0
    for src in task_sources(task, source):
        for where, rec in src.records():
            if isinstance(rec, Exception):
                continue
            try:
                examples = src.schema.render(rec)
            except ValueError:
                continue
            if not examples:
                continue
            yield where, examples
            n += 1
            if max_docs and n >= max_docs:
                return


def task_documents(task, source="offline", max_docs=0):
    """(where, text) of a task's documents (doc_text)."""
    for where, examples in task_examples(task, source, max_docs):
        yield where, doc_text(examples)


def doc_key(examples):
    """The key preparation knows a document by: the hash of its normalised first example."""
    return records.doc_hash(records.normalise(textformat.render_text(examples[0])))


def text_records(path):
    """(where, record, text) of a JSONL file whose records carry a non-empty "text"; errors name file:line."""
    for where, rec in records.read_jsonl(path):
        if isinstance(rec, Exception):
            raise rec
        t = rec.get("text")
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{where}: field 'text' missing or not a non-empty string")
        yield where, rec, t


def text_file(path):
    """(where, text) of a JSONL file with a "text" field; errors name file:line."""
    for where, _, t in text_records(path):
        yield where, t


# ---------------------------------------------------------------------------------------------
# classifier

def make_classifier(kind, seed):
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(solver="liblinear", class_weight="balanced", C=4.0)  # liblinear: fast on sparse hashed features
    if kind == "forest":  # phi-1's choice on embeddings
        from sklearn.ensemble import RandomForestClassifier
        return RandomForestClassifier(n_estimators=200, class_weight="balanced", random_state=seed, n_jobs=1)
    raise DataError(f"classifier={kind!r}: use 'logreg' or 'forest'")


def check_labels(texts, labels, where):
    n_pos = sum(labels)
    if n_pos == 0 or n_pos == len(labels):
        only = "positive (1)" if n_pos else "negative (0)"
        raise DataError(f"{where}: all {len(labels)} labels are {only}; a classifier needs both classes "
                        f"(lower/raise the score threshold or add documents of the other kind)")
    if min(n_pos, len(labels) - n_pos) < 4:
        raise DataError(f"{where}: only {min(n_pos, len(labels) - n_pos)} documents of the rarer class; "
                        f"need at least 4 to train and hold some out")


def train(texts, labels, out_dir, features=HASHING, classifier="logreg", seed=1337, test_fraction=0.2, where="labels",
          extra=None):
    """Fit on a stratified split, measure on the held-out part, save model.joblib and metrics.json."""
    import joblib
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.model_selection import train_test_split
    check_labels(texts, labels, where)
    feats = Features(features)
    x_tr, x_te, y_tr, y_te = train_test_split(texts, labels, test_size=test_fraction, random_state=seed,
                                              stratify=labels)
    clf = make_classifier(classifier, seed)
    clf.fit(feats(x_tr), y_tr)
    proba = clf.predict_proba(feats(x_te))[:, 1]
    pred = [int(p >= 0.5) for p in proba]
    metrics = {"accuracy": round(accuracy_score(y_te, pred), 4), "f1": round(f1_score(y_te, pred), 4),
               "auc": round(roc_auc_score(y_te, proba), 4) if len(set(y_te)) == 2 else None,
               "majority_baseline": round(max(sum(y_te), len(y_te) - sum(y_te)) / len(y_te), 4),
               "n_train": len(y_tr), "n_test": len(y_te), "positives": sum(labels), "negatives": len(labels) - sum(labels),
               "features": features, "classifier": classifier, "seed": seed, **(extra or {})}
    os.makedirs(out_dir, exist_ok=True)
    with atomic_file(os.path.join(out_dir, "model.joblib")) as tmp:
        joblib.dump({"features": features, "max_chars": feats.max_chars, "classifier": clf}, tmp)
    write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


class Scorer:
    """A trained model directory: score(texts) -> P(high educational value) per text."""

    def __init__(self, model_dir):
        import joblib
        path = os.path.join(model_dir, "model.joblib")
        if not os.path.isfile(path):
            raise DataError(f"quality model {model_dir}: no model.joblib (train one: python data/quality.py train ...)")
        saved = joblib.load(path)  # a pickle: load only models you trained yourself
        self.features = Features(saved["features"], saved["max_chars"])
        self.clf = saved["classifier"]
        self.model_dir = model_dir

    def score(self, texts):
        return self.clf.predict_proba(self.features(texts))[:, 1].tolist()


def prepare_filter(model_dir, min_quality):
    """For dataprep: examples -> score, and the threshold; None when no model is set."""
    if not model_dir:
        if min_quality:
            raise DataError("min_quality needs quality_model=<dir written by data/quality.py train>")
        return None
    if not 0.0 <= min_quality <= 1.0:
        raise DataError(f"min_quality must be between 0 and 1 (a probability), got {min_quality}")
    scorer = Scorer(model_dir)
    return lambda examples: scorer.score([doc_text(examples)])[0]


# ---------------------------------------------------------------------------------------------
# labels: a user's file, an LLM judge, reference positives vs random negatives

def read_labels(path, threshold=3):
    """A JSONL labels file: {"text", "label": 0|1} or {"text", "score": 0-5} (label = score >= threshold)."""
    if not os.path.isfile(path):
        raise DataError(f"labels={path}: no such file")
    texts, labels = [], []
    for where, rec, t in text_records(path):
        if "label" in rec:
            lab = rec["label"]
            if lab not in (0, 1):  # True/False count as 1/0
                raise DataError(f"{where}: field 'label' must be 0 or 1, got {json.dumps(lab)}")
            lab = int(lab)
        elif "score" in rec:
            s = rec["score"]
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise DataError(f"{where}: field 'score' must be a number, got {json.dumps(s)}")
            lab = int(s >= threshold)
        else:
            raise DataError(f"{where}: needs a 'label' (0/1) or a 'score' (0-5) field")
        texts.append(t)
        labels.append(lab)
    if not texts:
        raise DataError(f"{path}: no labelled documents")
    return texts, labels


_SCORE = re.compile(r"educational\s+score\s*[:=]?\s*\**\s*([0-5])(?:\s*/\s*5)?\b", re.I)


def parse_score(reply):
    """The judge's 0-5 score: 'Educational score: N' (last one wins), or a reply that is only the number.
    None when the reply holds neither: counted as unparsed, never guessed from stray digits."""
    found = _SCORE.findall(reply or "")
    if found:
        return int(found[-1])
    m = re.fullmatch(r"\s*\**([0-5])(?:\s*/\s*5)?\**\s*\.?\s*", reply or "")
    return int(m.group(1)) if m else None


def judge_requests(docs, model, prompt_path=JUDGE_PROMPT, max_tokens=256, temperature=0.0, max_chars=MAX_CHARS):
    from nanophi.llm import request_key
    try:
        with open(prompt_path, encoding="utf-8") as f:
            template = f.read()
    except OSError as e:
        raise DataError(f"prompt={prompt_path}: {e.strerror}") from None
    if "{document}" not in template:
        raise DataError(f"{prompt_path}: the judge prompt must contain {{document}} where the text goes")
    out = []
    for where, text in docs:
        messages = [{"role": "user", "content": template.replace("{document}", text[:max_chars])}]
        key = request_key(model, messages, max_tokens=max_tokens, temperature=temperature)
        out.append({"key": key, "where": where, "doc": text, "messages": messages})
    return out


def judge_labels(records, threshold=3):
    """Judge replies -> labels rows {"text", "score", "label", "where"} and the count of unparsed replies."""
    rows, unparsed = [], 0
    for r in records:
        s = parse_score(r["text"])
        if s is None:
            unparsed += 1
            continue
        rows.append({"text": r["doc"], "score": s, "label": int(s >= threshold), "where": r["where"]})
    return rows, unparsed


def handwritten_texts():
    """Every committed data/<task>/handwritten.jsonl rendered as its task renders it."""
    for path in sorted(glob.glob(os.path.join(ROOT, "data", "*", "handwritten.jsonl"))):
        task = os.path.basename(os.path.dirname(path))
        yield from task_documents(task, "offline")


def python_doc_texts():
    """The tutorial, how-to and FAQ sections of Python's documentation (python3.11-doc), when installed."""
    from nanophi import offline_sources
    for where, r in offline_sources.doc_sections(subdirs=("tutorial", "howto", "faq")):
        yield where, f"{r['title']}\n\n{r['text']}"


def reference_positives(spec):
    """--positives: comma-separated 'handwritten', 'python-docs' or JSONL files with a "text" field."""
    out = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if part == "handwritten":
            out += [t for _, t in handwritten_texts()]
        elif part == "python-docs":
            got = [t for _, t in python_doc_texts()]
            if not got:
                raise DataError("positives=python-docs: Python's documentation sources are not installed "
                                "(Debian package python3.11-doc)")
            out += got
        elif os.path.isfile(part):
            out += [t for _, t in text_file(part)]
        else:
            raise DataError(f"positives={part}: not 'handwritten', 'python-docs' or an existing .jsonl file")
    return out


def reference_labels(positives, negatives, seed=1337, ratio=1.0):
    """DCLM-style: reference texts labelled 1, a seeded random sample of other documents labelled 0."""
    pos_set = set(records.normalise(t) for t in positives)
    negatives = [t for t in negatives if records.normalise(t) not in pos_set]
    random.Random(seed).shuffle(negatives)
    negatives = negatives[:max(1, int(len(positives) * ratio))]
    return positives + negatives, [1] * len(positives) + [0] * len(negatives)


# ---------------------------------------------------------------------------------------------
# scoring a task and the reports

def score_documents(docs, scorer, out_dir, batch_size=512, top_k=10, progress=True, title="documents"):
    """Score (where, text) pairs in batches; write scores.jsonl, score_hist.png, top_bottom.md. Returns a summary."""
    from tqdm import tqdm
    os.makedirs(out_dir, exist_ok=True)
    scores_path = os.path.join(out_dir, "scores.jsonl")
    top, bottom, all_scores = [], [], []
    bar = tqdm(desc="scoring", unit=" docs", disable=not progress, file=sys.stderr, mininterval=1.0, dynamic_ncols=True)

    def flush(batch, f):
        for (where, text), s in zip(batch, scorer.score([t for _, t in batch])):
            all_scores.append(s)
            f.write(jsonl_line({"where": where, "score": round(s, 5), "chars": len(text)}))
            item = (s, len(all_scores), where, text[:800])
            heapq.heappush(top, item) if len(top) < top_k else heapq.heappushpop(top, item)
            neg = (-s, len(all_scores), where, text[:800])
            heapq.heappush(bottom, neg) if len(bottom) < top_k else heapq.heappushpop(bottom, neg)
        bar.update(len(batch))

    with atomic_file(scores_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        batch = []
        for d in docs:
            batch.append(d)
            if len(batch) >= batch_size:
                flush(batch, f)
                batch = []
        if batch:
            flush(batch, f)
        bar.close()
        if not all_scores:
            raise DataError(f"{title}: no documents to score")
    hist = os.path.join(out_dir, "score_hist.png")
    score_histogram(all_scores, hist, f"quality scores: {title} ({len(all_scores):,} documents)")
    md = os.path.join(out_dir, "top_bottom.md")
    write_text_atomic(md, top_bottom_page(title, sorted(top, reverse=True), sorted((-s, i, w, t) for s, i, w, t in bottom),
                                          scorer.model_dir))
    import numpy as np
    a = np.array(all_scores)
    return {"documents": len(a), "mean": round(float(a.mean()), 4),
            "quantiles": {q: round(float(np.quantile(a, q)), 4) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
            "above": {t: int((a >= t).sum()) for t in (0.25, 0.5, 0.75)},
            "scores": scores_path, "histogram": hist, "page": md}


def score_histogram(scores, path, title):
    from nanophi.plots import new_figure, save_png
    fig, ax = new_figure((7, 4))
    ax.hist(scores, bins=40, range=(0, 1), color="#3b7dd8")
    ax.set_xlabel("P(educational)")
    ax.set_ylabel("documents")
    ax.set_title(title)
    fig.tight_layout()
    save_png(fig, path)


def _quote(text):
    return "\n".join("> " + line for line in text.strip().splitlines()[:25])


def top_bottom_page(title, top, bottom, model_dir):
    parts = [f"# Quality scores: {title}\n", f"Model: `{model_dir}`. Score = P(educational) from the classifier; "
             f"texts cut at 800 characters.\n", "## Highest scored\n"]
    for s, _, where, text in top:
        parts.append(f"### {s:.3f} · {where}\n\n{_quote(text)}\n")
    parts.append("## Lowest scored\n")
    for s, _, where, text in bottom:
        parts.append(f"### {s:.3f} · {where}\n\n{_quote(text)}\n")
    return "\n".join(parts)
