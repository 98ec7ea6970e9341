"""Every hub schema through fixture files of the same shape, local file types, and the offline sources."""
import json
import os
import subprocess
import sys

import pytest

from conftest import split_texts as texts
from nanophi import records
from nanophi import offline_sources
from nanophi import textformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def load(task):
    return records.load_prepare(task)


def run(task, tmp_path, *args):
    return load(task).main([f"--out_dir={tmp_path}", "--progress=False", *args])


@pytest.mark.parametrize("task,fixture,schema,expect", [
    ("textbook", "tiny_textbooks.jsonl", "nampdn-ai/tiny-textbooks", "Photosynthesis is the process"),
    ("textbook", "sciphi_textbooks.jsonl", "SciPhi/textbooks-are-all-you-need-lite", "Chapter 2: Binary search"),
    ("math", "metamathqa.jsonl", "meta-math/MetaMathQA", "The answer is: 132"),
    ("logic", "open_platypus.jsonl", "garage-bAInd/Open-Platypus", "Neither: both weigh one kilogram."),
])
def test_text_schemas(tmp_path, task, fixture, schema, expect):
    meta = run(task, tmp_path, f"--source={os.path.join(FIX, fixture)}", "--n_eval=20" if task in ("math", "logic") else "--seed=1")
    assert meta["sources"] == {f"file:{fixture}": 3}
    docs = texts(tmp_path, task)
    assert len(docs) == 3 and all(t.startswith(textformat.TAGS[task]) and t.endswith("<|endoftext|>") for t, _ in docs)
    assert any(expect in t for t, _ in docs)
    if task in ("math", "logic"):   # QA: only the answer (and end-of-text) is trained
        full, trained = next(d for d in docs if expect in d[0])
        assert trained.startswith(" ") and expect in trained and "Answer:" not in trained


def test_open_platypus_input_joins_instruction(tmp_path):
    run("logic", tmp_path, f"--source={os.path.join(FIX, 'open_platypus.jsonl')}", "--n_eval=20")
    full = [t for t, _ in texts(tmp_path, "logic") if "Decide whether" in t][0]
    assert "Decide whether the argument is valid.\n\nPremise: some cats are black." in full


def test_code_search_net(tmp_path):
    meta = run("code", tmp_path, f"--source={os.path.join(FIX, 'code_search_net.jsonl')}")
    docs = texts(tmp_path, "code")
    # parseable functions give both shapes, the Python 2 one is kept as written
    assert meta["sources"] == {"file:code_search_net.jsonl": 5}
    csn = [t for t, tr in docs if t == tr and "def clamp" in t][0]          # all trained
    assert csn.startswith('[Code] """Limit value to the range [low, high]."""\ndef clamp(value, low, high):')
    assert csn.count("Limit value") == 1                                    # docstring not repeated
    ex_full, ex_trained = [(t, tr) for t, tr in docs if t != tr and "def clamp" in t][0]
    assert ex_trained.startswith("    if value < low:") and "def clamp" not in ex_trained
    assert any('print "hello", name' in t for t, _ in docs)


def test_pippa_roleplay(tmp_path):
    run("roleplay", tmp_path, f"--source={os.path.join(FIX, 'pippa.jsonl')}")
    docs = texts(tmp_path, "roleplay")
    aria = [d for d in docs if "Aria:" in d[0]][0]
    assert aria[0].startswith("[Roleplay]\n[System]: A cheerful bard.\nAria is a wandering bard who greets User with songs.")
    assert "\nUser: Sure, sing about the sea.\nAria: *strums" in aria[0]
    assert "Beautiful!" not in aria[0]          # a trailing user turn has no reply to learn
    assert aria[1] == (" Greetings, traveller. Care for a song?<|endoftext|> *strums the lute* Oh the waves roll high"
                       " and the gulls cry low...<|endoftext|>")


def test_pippa_and_personachat_as_chat(tmp_path):
    for fixture in ("pippa.jsonl", "personachat_truecased.jsonl", "persona_chat.jsonl"):
        out = tmp_path / fixture
        meta = run("chat", out, f"--source={os.path.join(FIX, fixture)}")
        assert sum(meta["sources"].values()) == (2 if fixture != "personachat_truecased.jsonl" else 3)
        docs = texts(out, "chat")
        assert all(t.startswith("[Chat]\n[System]: ") for t, _ in docs)
        if fixture == "personachat_truecased.jsonl":
            # each row trains only its own gold reply (the last candidate), history is prompt
            row = [d for d in docs if "Nice, where did you go?" in d[0]][0]
            assert row[0].startswith("[Chat]\n[System]: Your persona: I like to ski. I have two dogs.\n[Human]: Hi! How are you today?\n"
                                     "[Bot]: Great, I just got back from skiing!")
            assert row[1] == " A small resort in the Alps, my dogs came too.<|endoftext|>"
        if fixture == "persona_chat.jsonl":
            conv = [d for d in docs if "felix" in d[0]][0]
            assert conv[1] == " hello! i just came back from a hike.<|endoftext|> yes, felix sleeps all day, lucky cat.<|endoftext|>"


def test_handwritten_schemas_in_every_style(tmp_path):
    meta = run("chat", tmp_path / "c", f"--source={os.path.join(FIX, 'chat_handwritten.jsonl')}")
    assert meta["styles"] == list(textformat.CHAT_STYLES) and meta["sources"] == {"file:chat_handwritten.jsonl": 9}
    docs = texts(tmp_path / "c", "chat")
    for style, m in textformat.CHAT_STYLES.items():
        assert any(f"{m['user']} Name a prime number.\n{m['bot']} 7.<|endoftext|>" in t for t, _ in docs), style
    meta = run("roleplay", tmp_path / "r", f"--source={os.path.join(FIX, 'roleplay_handwritten.jsonl')}", "--styles=['nanophi']")
    docs = texts(tmp_path / "r", "roleplay")
    assert meta["styles"] == ["nanophi"] and len(docs) == 2
    assert any("\nEnsign: Captain, an unknown ship!\nCaptain Mara: Steady." in t for t, _ in docs)
    assert any("\n[Human]: Morning, Tom! Any news?\nOld Tom: News?" in t for t, _ in docs)  # user_name null
    meta = run("symposium", tmp_path / "s", f"--source={os.path.join(FIX, 'chat_handwritten.jsonl')}", "--styles=['nanophi','plain']")
    assert meta["tag"] == "[Chat]" and sum(meta["splits"][s]["documents"] for s in ("train", "val")) == 6
    with pytest.raises(records.DataError, match="nanophi"):
        run("chat", tmp_path / "x", f"--source={os.path.join(FIX, 'chat_handwritten.jsonl')}", "--styles=['plain']")


def test_parquet_and_text_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [json.loads(l) for l in open(os.path.join(FIX, "metamathqa.jsonl"))]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mm.parquet", row_group_size=1)
    meta = run("math", tmp_path / "p", f"--source={tmp_path / 'mm.parquet'}", "--n_eval=20")
    assert meta["sources"] == {"file:mm.parquet": 3}
    (tmp_path / "book.txt").write_text("First document.\nStill first.\n<|endoftext|>\nSecond document.\n<|endoftext|>\n\n")
    meta = run("textbook", tmp_path / "t", f"--source={tmp_path / 'book.txt'}")
    docs = sorted(t for t, _ in texts(tmp_path / "t", "textbook"))
    assert docs == ["[Textbook] First document.\nStill first.<|endoftext|>", "[Textbook] Second document.<|endoftext|>"]


def test_offline_sources_small(tmp_path):
    for task in ("textbook", "code", "excerpt"):
        meta = run(task, tmp_path, "--max_docs=25")
        assert meta["splits"]["train"]["documents"] > 0 and meta["splits"]["val"]["documents"] > 0
        assert all(n <= 25 for n in meta["records_read"].values())
    docs = texts(tmp_path, "code")
    assert any(t == tr for t, tr in docs) and any(t != tr for t, tr in docs)   # both code shapes


def test_rst_cleaning():
    rst = ("Heading\n=======\n\n.. index:: single: thing\n\nUse :func:`os.path.join` and :ref:`the guide <guide>`, "
           "``x + 1`` or :meth:`~dict.get`.\n\n.. note::\n   Keep this.\n\n.. function:: spam(eggs)\n   :noindex:\n\n   Make spam.\n\n"
           "Sub\n---\n\nExample::\n\n    print(1)\n")
    secs = offline_sources.rst_to_sections(rst)
    assert [(t, lvl) for t, lvl, _ in secs] == [("Heading", 0), ("Sub", 1)]
    body = secs[0][2]
    assert "Use `os.path.join` and `the guide`, `x + 1` or `get`." in body
    assert "index" not in body and ":noindex:" not in body
    assert "Note:\nKeep this." in body and "spam(eggs)\n\n    Make spam." in body
    assert secs[1][2] == "Example:\n\n    print(1)"


@pytest.mark.slow
def test_prepare_script_runs_from_repo_root(tmp_path):
    r = subprocess.run([sys.executable, "data/math/prepare.py", f"--out_dir={tmp_path}", "--num_generated=300",
                        "--n_eval=30", "--progress=False"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| math |" in r.stdout
    meta = json.load(open(tmp_path / "math" / "meta.json"))
    assert meta["eval"]["items"] == 30 and os.path.isfile(tmp_path / "math" / "eval.jsonl")
    r = subprocess.run([sys.executable, "data/math/prepare.py", "--out_dir=/nonexistent-not-used", "--source=missing.jsonl"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == "error: missing.jsonl: no such file"
