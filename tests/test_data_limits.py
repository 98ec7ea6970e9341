"""Memory stays bounded for long records: a record over max_record_mb is bad input naming file:line
(skipped with --skip_bad), and one under it is processed without holding copies per shingle."""
import json
import os
import subprocess
import sys

import pytest

from nanophi import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1_000_000


def long_text(n_bytes):
    """Varied words (so every 5-gram shingle is distinct, the worst case for near dedup)."""
    words, size = [], 0
    while size < n_bytes:
        words.append(f"w{len(words) * 7919 % 1000003:x}")
        size += len(words[-1]) + 1
    return " ".join(words)[:n_bytes - 20]  # the JSON line around it: about n_bytes


def write_source(path, big_bytes):
    with open(path, "w") as f:
        f.write(json.dumps({"textbook": "A short first document about plants and light."}) + "\n")
        f.write(json.dumps({"textbook": long_text(big_bytes)}) + "\n")
        f.write(json.dumps({"textbook": "A short last document about rivers and rain."}) + "\n")
    return str(path)


def prepare_peak_rss(src, out, *args):
    """Run data/textbook/prepare.py in a child of a fresh interpreter; its peak RSS in MB, exit status, stderr."""
    probe = ("import resource, subprocess, sys\n"
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "sys.stderr.write(r.stderr)\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
             "sys.exit(r.returncode)")
    cmd = [sys.executable, "-c", probe, sys.executable, "data/textbook/prepare.py", f"--source={src}",
           f"--out_dir={out}", "--progress=False", *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return int(r.stdout.split()[-1]), r.returncode, r.stderr


@pytest.mark.slow
def test_huge_record_is_refused_with_bounded_memory(tmp_path):
    src = write_source(tmp_path / "big.jsonl", 50 * MB)
    peak, rc, err = prepare_peak_rss(src, tmp_path / "out")
    assert rc == 1 and "Traceback" not in err
    assert f"{src}:2: record of 50.0 MB, more than max_record_mb=4" in err and "--skip_bad" in err
    peak, rc, err = prepare_peak_rss(src, tmp_path / "out", "--skip_bad=True")
    assert rc == 0, err
    meta = json.load(open(tmp_path / "out" / "textbook" / "meta.json"))
    assert meta["skipped"] == 1 and meta["skipped_examples"][0].startswith(f"{src}:2: record of 50.0 MB")
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 2
    assert peak < 300, f"peak RSS {peak} MB for a 50 MB record"  # it took 3.4 GB (6.6 GB reported)


@pytest.mark.slow
def test_long_record_under_the_cap_has_bounded_memory(tmp_path):
    src = write_source(tmp_path / "long.jsonl", 3 * MB)
    peak, rc, err = prepare_peak_rss(src, tmp_path / "out")
    assert rc == 0, err
    meta = json.load(open(tmp_path / "out" / "textbook" / "meta.json"))
    assert meta["skipped"] == 0 and meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] > MB // 2
    assert peak < 300, f"peak RSS {peak} MB for a 3 MB record"  # 367 MB before near dedup hashed in chunks


def test_long_text_document_is_reported_at_its_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first document\n<|endoftext|>\n" + "x" * 2000 + "\n" + "y" * 2000 + "\n<|endoftext|>\nlast one\n")
    got = list(records.read_text(str(path), max_mb=0.003))
    assert got[0] == (f"{path}:1", {"text": "first document\n"})
    assert isinstance(got[1][1], records.DataError) and str(got[1][1]).startswith(f"{path}:3: record of 0.0 MB")
    assert got[2] == (f"{path}:6", {"text": "last one\n"}) and len(got) == 3
    # a line longer than the cap is never read whole
    path.write_text('{"text": "ok"}\n{"text": "' + "z" * 5000 + '"}\n{"text": "fine"}\n')
    got = list(records.read_jsonl(str(path), max_mb=0.001))
    assert got[0][1] == {"text": "ok"} and got[2] == (f"{path}:3", {"text": "fine"})
    assert str(got[1][1]).startswith(f"{path}:2: record of 0.0 MB, more than max_record_mb=0.001")
