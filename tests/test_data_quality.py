"""
Quality scoring: judge-reply parsing, labels files (errors as file:line, one class refused), a real
classifier trained and measured, scoring reports, the min_quality filter in preparation, and the judge
path through a real serve.py with the openai client (replies kept, unparsable ones counted, resumable).
"""
import json
import os
import subprocess
import sys

import pytest

from nanophi import quality
from nanophi.records import DataError
from test_serve import Server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# two kinds of text a hashing classifier can tell apart: explanations vs shouting sales copy
GOOD = ["A list in Python holds items in order; indexing starts at zero, so xs[0] is the first item.",
        "To find the greatest common divisor, Euclid's algorithm replaces (a, b) with (b, a mod b) until b is zero.",
        "A function returns a value with the return statement; without one, it returns None.",
        "Binary search halves the interval each step, so it needs about log2(n) comparisons on a sorted list.",
        "A dictionary maps keys to values; looking up a key takes constant time on average.",
        "Recursion solves a problem by solving a smaller instance of the same problem, with a base case to stop.",
        "The mean of a list is its sum divided by its length; the median is the middle value after sorting.",
        "A for loop visits each item of an iterable; range(n) gives the integers from 0 to n - 1."]
BAD = ["BUY NOW!!! best deals cheap cheap cheap click here limited offer",
       "click here to win a free prize now now now amazing offer buy",
       "hot singles cheap pills discount click subscribe now free free",
       "limited time only!!! click the link buy two get one free deals",
       "subscribe like share click win win win cheap offer now",
       "amazing discount click here now free shipping buy buy buy",
       "best price guaranteed click now offer ends soon buy now",
       "free gift card click here claim now hurry limited offer"]


def run(script, args, env=None):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def write_labels(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("reply,score", [
    ("The extract explains loops clearly.\nEducational score: 4", 4),
    ("Points: 1+1+1.\n**Educational score: 3**", 3),
    ("educational score = 2/5", 2),
    ("Educational score: 1 ... on reflection, Educational score: 5", 5),
    ("3", 3), (" 0 ", 0),
    ("I give it 4 out of 5 but will not say the words", None),
    ("Educational score: 7", None),
    ("", None), ("garbled ,,; 12 kitten 3 4", None),
])
def test_parse_score(reply, score):
    assert quality.parse_score(reply) == score


@pytest.mark.parametrize("content, error", [
    ('{"text": "ok", "label": 1}\n{"text": "broken"\n', r"labels.jsonl:2: malformed JSON"),
    ('{"text": "ok", "label": 1}\n\n{"text": "x", "label": 0.5}\n', r"labels.jsonl:3: field 'label' must be 0 or 1"),
    ('{"text": "ok", "score": "high"}\n', r"labels.jsonl:1: field 'score' must be a number"),
    ('{"label": 1}\n', r"labels.jsonl:1: field 'text' missing"),
])
def test_labels_file_errors_name_file_and_line(tmp_path, content, error):
    p = tmp_path / "labels.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match=error):
        quality.read_labels(str(p))


def test_labels_scores_are_cut_at_the_threshold(tmp_path):
    p = tmp_path / "labels.jsonl"
    p.write_text('{"text": "a", "score": 4}\n{"text": "b", "score": 2}\n{"text": "c", "label": 0}\n')
    assert quality.read_labels(str(p), threshold=3) == (["a", "b", "c"], [1, 0, 0])


@pytest.mark.slow
def test_cli_malformed_labels_and_one_class(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": 1}\nnot json\n')
    r = run("data/quality.py", ["train", f"--labels={bad}", f"--out_dir={tmp_path}"])
    assert r.returncode == 2 and f"{bad}:2: malformed JSON" in r.stderr and "Traceback" not in r.stderr
    one = write_labels(tmp_path / "one.jsonl", [{"text": t, "score": 4} for t in GOOD])
    r = run("data/quality.py", ["train", f"--labels={one}", f"--out_dir={tmp_path}"])
    assert r.returncode == 2 and "all 8 labels are positive (1)" in r.stderr
    assert not (tmp_path / "model.joblib").exists()
    r = run("data/quality.py", ["rank"])
    assert r.returncode == 2 and "first argument must be one of label, train, score" in r.stderr


def test_train_measures_and_scores(tmp_path):
    texts = GOOD * 3 + BAD * 3  # repeated so the held-out split has both kinds
    labels = [1] * 24 + [0] * 24
    m = quality.train(texts, labels, str(tmp_path), seed=0)
    assert m["n_test"] == 10 and m["n_train"] == 38
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0
    assert json.load(open(tmp_path / "metrics.json"))["f1"] == m["f1"]
    scorer = quality.Scorer(str(tmp_path))
    good, bad = scorer.score(["A loop repeats a block; a for loop visits each item in a list.",
                              "click here buy now cheap offer free"])
    assert good > 0.5 > bad
    docs = [(f"doc{i}", t) for i, t in enumerate(GOOD + BAD)]
    s = quality.score_documents(docs, scorer, str(tmp_path / "report"), batch_size=3, top_k=3, progress=False)
    assert s["documents"] == 16 and s["above"][0.5] == 8
    scores = [json.loads(x) for x in open(s["scores"])]
    assert [x["where"] for x in scores] == [d for d, _ in docs]
    page = open(s["page"]).read()
    top, bottom = page.split("## Lowest scored")
    quoted = lambda part: [line[2:] for line in part.splitlines() if line.startswith("> ")]  # noqa: E731
    assert len(quoted(top)) == len(quoted(bottom)) == 3
    assert set(quoted(top)) <= set(GOOD) and set(quoted(bottom)) <= set(BAD)
    assert open(s["histogram"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_min_quality_filters_in_prepare(tmp_path):
    model = tmp_path / "model"
    quality.train(GOOD * 3 + BAD * 3, [1] * 24 + [0] * 24, str(model), seed=0)
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in GOOD + BAD))
    args = [f"--source={src}", f"--out_dir={tmp_path}", "--progress=False", "--near_dedup=False"]
    r = run("data/textbook/prepare.py", args + [f"--quality_model={model}", "--min_quality=0.5"])
    assert r.returncode == 0, r.stderr
    meta = json.load(open(tmp_path / "textbook" / "meta.json"))
    assert meta["quality"] == {"model": str(model), "min_quality": 0.5, "kept": 8, "dropped": 8}
    assert sum(s["documents"] for s in meta["splits"].values()) == 8
    from nanophi.tokenizer import decode
    import numpy as np
    text = decode(np.concatenate([np.fromfile(tmp_path / "textbook" / f"{s}.bin", dtype=np.uint16)
                                  for s in ("train", "val")]).tolist())
    assert "Euclid" in text and "click" not in text
    r = run("data/textbook/prepare.py", args + ["--min_quality=0.5"])
    assert r.returncode == 1 and "min_quality needs quality_model" in r.stderr
    r = run("data/textbook/prepare.py", args + [f"--quality_model={tmp_path}/nothing", "--min_quality=0.5"])
    assert r.returncode == 1 and "no model.joblib" in r.stderr


def test_summary_prints_the_quality_filters_dropped_count(tmp_path):
    """In process: the dropped count is in meta.json and on the summary line, not only in meta.json."""
    from nanophi import dataprep, records, textformat
    model = tmp_path / "model"
    quality.train(GOOD * 3 + BAD * 3, [1] * 24 + [0] * 24, str(model), seed=0)
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in GOOD + BAD))
    schemas = [records.Schema("text", ["text"], lambda r: [textformat.textbook(records.need(r, "text"))])]
    cfg = records.settings([f"--out_dir={tmp_path}", "--progress=False", "--near_dedup=False",
                            f"--quality_model={model}", "--min_quality=0.5"])
    meta = dataprep.prepare("textbook", records.resolve_sources(str(src), schemas, [], schema_name=cfg.schema), cfg)
    assert meta["quality"]["dropped"] == 8 and meta["quality"]["kept"] == 8
    head, _, row = dataprep.summary_table([meta]).splitlines()
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["quality dropped"] == "8 of 16"
    meta["quality"] = None  # no filter ran: said as '-', not as 0 dropped
    _, _, row = dataprep.summary_table([meta]).splitlines()
    assert dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")]))["quality dropped"] == "-"


def test_reference_labels_are_dclm_style():
    texts, labels = quality.reference_labels(["p1", "p2"], ["n1", "p1", "n2", "n3", "n4"], seed=1, ratio=1.0)
    assert texts[:2] == ["p1", "p2"] and labels == [1, 1, 0, 0]
    assert "p1" not in texts[2:]  # a positive never doubles as a negative


@pytest.mark.slow
def test_judge_through_serve_counts_unparsed_and_resumes(tiny_out_dir_1k, tmp_path):
    """A random tiny model is a bad judge: its replies do not parse. They are kept, counted, and a rerun asks nothing."""
    srv = Server([f"--out_dir={tiny_out_dir_1k}"], str(tmp_path / "serve.log")).wait()
    try:
        args = ["label", "--task=textbook", "--judge_docs=4", "--judge_max_tokens=24", "--judge_chars=1500",
                f"--base_url={srv.url}/v1", f"--out_dir={tmp_path}", "--progress=False"]
        r = run("data/quality.py", args)
        assert r.returncode == 0, r.stderr
        replies = [json.loads(x) for x in open(tmp_path / "judge_replies.jsonl")]
        assert len(replies) == 4
        parsed = sum(quality.parse_score(x["text"]) is not None for x in replies)
        assert f"4 asked, 0 failed requests, {4 - parsed} replies without a parseable score, {parsed} labelled" in r.stdout
        assert len(open(tmp_path / "labels.jsonl").read().splitlines()) == parsed
        r = run("data/quality.py", args)
        assert "4 already judged, 0 asked" in r.stdout
    finally:
        srv.stop()


def tiny_sentence_model(path):
    """A tiny random BERT with a word-piece vocabulary written here: a local sentence-transformers directory."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    words = sorted({w.strip(".,;:!()'").lower() for t in GOOD + BAD for w in t.split()} - {""})
    path.mkdir()
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(path))
    cfg = BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(str(path))
    return str(path)


@pytest.mark.slow
def test_sentence_transformers_features_from_a_local_dir(tmp_path):
    model = tiny_sentence_model(tmp_path / "st")
    f = quality.Features(model)
    x = f(["a list holds items", "click here"])
    assert x.shape == (2, 32) and abs(float(x[0] @ x[1]) - 1) > 1e-4  # two texts, two embeddings
    m = quality.train(GOOD * 3 + BAD * 3, [1] * 24 + [0] * 24, str(tmp_path / "clf"), features=model, seed=0)
    assert m["features"] == model  # the classifier remembers which embedder its features need
    first = quality.Scorer(str(tmp_path / "clf")).score(["a loop", "buy now"])
    again = quality.Scorer(str(tmp_path / "clf")).score(["a loop", "buy now"])
    assert len(first) == 2 and list(first) == list(again)  # a reloaded classifier scores as saved
