"""
Decontamination by AST and embedding similarity against HumanEval (and an MBPP file): a renamed copy of a
canonical solution is caught where 13-grams miss it, the report names the pair, and preparation drops
what the drop list names.
"""
import json
import os
import subprocess
import sys

import pytest

from nanophi import decontam
from nanophi.records import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# HumanEval/0 (has_close_elements) rewritten: every name changed, constants changed, its own docstring
RENAMED_COPY = '''def any_pair_near(values, limit):
    """Tell whether two entries of values lie within limit of each other."""
    for a, first in enumerate(values):
        for b, second in enumerate(values):
            if a != b:
                gap = abs(first - second)
                if gap < limit:
                    return 1
    return 0
'''
UNRELATED = '''def word_counts(text):
    """Count how often each word occurs in text."""
    counts = {}
    for word in text.split():
        word = word.strip(".,;").lower()
        counts[word] = counts.get(word, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    return dict(ordered)
'''
OTHER = '''def running_max(xs):
    """Running maximum of a list."""
    best, out = None, []
    for x in xs:
        best = x if best is None or x > best else best
        out.append(best)
    return out
'''


def problems():
    return decontam.humaneval_problems()


def test_ast_normalisation_ignores_names_and_literals():
    a = decontam.functions("def f(x, y):\n    z = x + 1\n    w = z * y\n    if w > 3:\n        return 'a'\n    return w\n")
    b = decontam.functions("def g(p, q):\n    r = p + 9\n    s = r * q\n    if s > 0:\n        return 'zz'\n    return s\n")
    c = decontam.functions("def g(p, q):\n    r = p - 9\n    s = r * q\n    if s > 0:\n        return 'zz'\n    return s\n")
    assert a == b and a != c  # operators are structure, names and constants are not
    assert decontam.functions("def tiny(s):\n    return len(s)\n") == []  # too small to compare


def test_code_blocks_from_prose_and_fences():
    text = "Intro prose.\n```python\n" + UNRELATED + "```\nMore prose."
    assert len(decontam.functions(text)) == 1
    text = "Some words first.\n\n" + OTHER + "\nAnd a closing remark."
    assert len(decontam.functions(text)) == 1


def test_scan_flags_the_renamed_copy_only():
    probs = problems()
    docs = [("copy", 1, RENAMED_COPY), ("unrelated", 2, UNRELATED), ("other", 3, OTHER)]
    dropped, closest, counts = decontam.scan(docs, probs, progress=False)
    assert [d["where"] for d in dropped] == ["copy"]
    assert "AST 1.000 to HumanEval/0" in dropped[0]["reason"]
    assert counts == {"documents": 3, "with_code": 3, "dropped": 1, "problems_with_ast": counts["problems_with_ast"]}
    assert 50 < counts["problems_with_ast"] < 164
    assert max(closest[0]["ast"])[1] == "copy"


def test_scan_flags_a_near_verbatim_text_by_embedding():
    probs = problems()
    p = probs[10]
    near = p["text"].replace("Return", "Give back")
    dropped, _, _ = decontam.scan([("near", 7, near)], probs, ast_threshold=1.0, progress=False)
    assert dropped and f"to {p['id']}" in dropped[0]["reason"] and "embedding" in dropped[0]["reason"]


def test_mbpp_file_and_errors(tmp_path):
    mb = tmp_path / "mbpp.jsonl"
    mb.write_text(json.dumps({"task_id": 11, "text": "Write a function to count words.", "code": UNRELATED}) + "\n")
    probs = decontam.mbpp_problems(str(mb))
    assert probs[0]["id"] == "MBPP/11" and probs[0]["benchmark"] == "MBPP"
    dropped, _, _ = decontam.scan([("d", 1, UNRELATED.replace("counts", "tally"))], probs, progress=False)
    assert dropped and "MBPP/11" in dropped[0]["reason"]
    mb.write_text('{"task_id": 1, "text": "x"}\n')
    with pytest.raises(DataError, match=r"mbpp.jsonl:1: MBPP rows need"):
        decontam.mbpp_problems(str(mb))
    with pytest.raises(DataError, match="no such file"):
        decontam.mbpp_problems(str(tmp_path / "none.jsonl"))


@pytest.mark.slow
def test_report_drop_list_and_prepare(tmp_path):
    src = tmp_path / "funcs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in (RENAMED_COPY, UNRELATED, OTHER)))
    r = subprocess.run([sys.executable, "data/decontaminate.py", "--task=code", f"--source={src}",
                        f"--out_dir={tmp_path}", "--progress=False"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "MBPP: not checked (not available offline" in r.stdout and "1 dropped" in r.stdout
    page = open(tmp_path / "code_decontam.md").read()
    assert "| HumanEval/0 |" in page and "AST 1.000 to HumanEval/0" in page
    drop = tmp_path / "code_decontam_drop.json"
    args = [sys.executable, "data/code/prepare.py", f"--source={src}", f"--out_dir={tmp_path}", "--progress=False",
            "--near_dedup=False"]
    p = subprocess.run(args + [f"--decontam_drop={drop}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    meta = json.load(open(tmp_path / "code" / "meta.json"))
    assert meta["decontamination"]["drop_list_dropped"] == 1 and meta["decontamination"]["humaneval"] == 0
    assert sum(s["documents"] for s in meta["splits"].values()) == 2
    drop.write_text("[1, 2]")
    p = subprocess.run(args + [f"--decontam_drop={drop}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "not a drop list written by data/decontaminate.py" in p.stderr
