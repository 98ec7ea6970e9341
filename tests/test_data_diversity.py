"""The diversity report: distinct-n at an equal word budget, cluster coverage, openings, lengths, side by side."""
import os
import subprocess
import sys

import pytest

from nanophi import diversity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_distinct_n_and_openings():
    varied = [f"the {a} {b} of number {i} grows" for i, (a, b) in enumerate(zip("abcdefghij", "klmnopqrst"))]
    same = ["the same words again and again"] * 10
    dv, ds = diversity.distinct_n(varied, 40), diversity.distinct_n(same, 40)
    assert dv[1] > ds[1] and dv[3] > ds[3]
    assert ds[2] < 0.5 and dv[4] == 1.0
    top, shared = diversity.openings(same)
    assert top[0] == ("the same words again and", 10) and shared == 1.0
    assert diversity.openings(varied)[1] == 0.0


@pytest.mark.slow
def test_report_side_by_side(tmp_path):
    natural = [f"Topic {i}: " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(30 + i)) for i in range(60)]
    generated = ["Once upon a time there was a list. " * 3 + f"item {i % 3}" for i in range(60)]
    md = diversity.report({"natural": natural, "generated": generated}, str(tmp_path), k=8)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]] for line in md.splitlines()
            if line.startswith("| ") and line.count("|") == 4}
    n_clusters = {k: v for k, v in rows.items() if k.startswith("clusters with")}
    (nat_c, gen_c), = n_clusters.values()
    assert int(nat_c) > int(gen_c)
    assert float(rows["share of docs with a shared opening"][1]) == 1.0
    assert os.path.getsize(tmp_path / "lengths.png") > 1000 and (tmp_path / "diversity.md").exists()


def test_cli_bad_set():
    r = subprocess.run([sys.executable, "data/diversity.py", "--sets=textbook"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "must be <task>:<source>" in r.stderr
