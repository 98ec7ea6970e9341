"""One default output folder: sample/serve/eval/export find the quick start's out-nanophi-cpu (the most
recently trained out*/ folder) when out/ has no checkpoint, and errors name the folders that exist."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from nanophi.checkpoint import BEST, LATEST, default_out_dir, find_checkpoint


def touch(path, mtime):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    os.utime(path, (mtime, mtime))


def test_default_out_dir_is_out_else_newest_trained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_out_dir() == "out"  # nothing trained anywhere: the usual default
    touch("out-old/" + BEST, 1_000_000)
    touch("out-nanophi-cpu/" + LATEST, 2_000_000)
    touch("other/" + BEST, 3_000_000)  # not an out* folder
    os.makedirs("out")  # exists but holds no checkpoint
    assert default_out_dir() == "out-nanophi-cpu"
    touch("out/" + LATEST, 500)
    assert default_out_dir() == "out"  # out/ with a checkpoint always wins
    with pytest.raises(FileNotFoundError) as e:
        find_checkpoint("out-missing")
    assert "folders with a checkpoint: out-nanophi-cpu, out-old, out" in str(e.value)


@pytest.mark.slow
def test_scripts_find_the_quick_start_folder(tiny_out_dir, tmp_path):
    shutil.copytree(tiny_out_dir, tmp_path / "out-nanophi-cpu")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), "--start=Hello", "--max_new_tokens=3",
                        "--temperature=0"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"loaded {os.path.join('out-nanophi-cpu', BEST)}" in r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--out_dir=out", "--metrics=['loss']"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no checkpoint in 'out'" in r.stderr and "folders with a checkpoint: out-nanophi-cpu" in r.stderr
