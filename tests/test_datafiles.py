"""nanophi/datafiles.py: split files written and read back with their checks; prepared data become
visible all at once: kill -9 at every publishing step leaves the old or the new set (tokens, masks,
offsets, meta.json, eval.jsonl), never a mix; leftovers are cleaned."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from nanophi import dataprep, records, textformat
from nanophi import datafiles
from nanophi.datafiles import CURRENT, TaskSplit
from nanophi.tokenizer import EOT_ID, decode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = [records.Schema("text", ["text"], lambda r: [textformat.textbook(records.need(r, "text"))])]

# prepares data/<task> from a JSONL file; version 'old' or 'new' marks every document and eval item
PREPARE = """
import json, sys
sys.path.insert(0, {root!r})
from nanophi import dataprep, records, textformat
schema = [records.Schema("text", ["text"], lambda r: [textformat.textbook(records.need(r, "text"))])]
out, source, version = sys.argv[1:4]
cfg = records.settings(["--out_dir=" + out, "--progress=False", "--near_dedup=False"])
items = [{{"question": f"{{version}} question {{i}}", "answer": str(i)}} for i in range(3)]
dataprep.prepare("math", records.resolve_sources(source, schema, []), cfg, eval_items=items)
"""


def source(tmp_path, version, n):
    path = tmp_path / f"{version}.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"{version} document number {i} about topic {i * 7 % 11}"}) + "\n")
    return str(path)


def run_prepare(tmp_path, version, n, kill_at=None):
    """Prepare in a subprocess; kill_at=k: SIGKILL it while it waits before publishing step k.
    Returns the exit status (negative: killed)."""
    script = PREPARE.format(root=ROOT)
    env = dict(os.environ, NANOPHI_PUBLISH_PAUSE_AT="" if kill_at is None else str(kill_at))
    p = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data"), source(tmp_path, version, n), version],
                         env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in p.stderr:
            if line.startswith(f"publish step {kill_at}:"):
                os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(timeout=120)
    return p.returncode


def state(tmp_path):
    """'old', 'new' or None (nothing prepared) after checking that every file agrees."""
    data, task_dir = str(tmp_path / "data"), tmp_path / "data" / "math"
    if not os.path.exists(task_dir / "train.bin"):
        assert not any(os.path.exists(task_dir / n) for n in ("val.bin", "meta.json", "eval.jsonl"))
        return None
    seen = set()
    for split in ("train", "val"):
        s = TaskSplit(data, "math", split)  # raises on tokens/mask/offsets that disagree
        seen |= {decode(s.document(i)[0]).split()[1] for i in range(s.n_docs)}
        seen.add(next(iter(s.meta["sources"])).split(":")[1].split(".")[0])
    seen |= {json.loads(line)["question"].split()[0] for line in open(task_dir / "eval.jsonl")}
    seen.add(next(iter(json.load(open(task_dir / "meta.json"))["sources"])).split(":")[1].split(".")[0])
    assert len(seen) == 1, f"a mix of prepared sets: {seen}"
    return seen.pop()


def legacy_layout(task_dir):
    """Turn published data into the layout of earlier versions: real files, no .current."""
    for name in os.listdir(task_dir):
        path = task_dir / name
        if os.path.islink(path) and name != CURRENT:
            real = os.path.realpath(path)
            os.remove(path)
            shutil.copy(real, path)
    os.remove(task_dir / CURRENT)
    for folder in glob.glob(str(task_dir / ".prepared-*")):
        shutil.rmtree(folder)


@pytest.mark.slow
@pytest.mark.parametrize("old_layout", ["published", "legacy"])
def test_kill_at_every_publishing_step_leaves_old_or_new(tmp_path, old_layout):
    task_dir = tmp_path / "data" / "math"
    assert run_prepare(tmp_path, "old", 30) == 0
    if old_layout == "legacy":
        legacy_layout(task_dir)
    shutil.copytree(tmp_path / "data", tmp_path / "old", symlinks=True)  # the old state, restored before each kill
    results = []
    k = 0
    while True:
        shutil.rmtree(tmp_path / "data")
        shutil.copytree(tmp_path / "old", tmp_path / "data", symlinks=True)
        assert state(tmp_path) == "old"
        rc = run_prepare(tmp_path, "new", 50, kill_at=k)
        if rc == 0:  # no step k: the run finished
            break
        assert rc == -signal.SIGKILL
        results.append(state(tmp_path))
        k += 1
    assert state(tmp_path) == "new"
    assert results[0] == "old" and results[-1] == "new"  # killed before the first step / at the last (clean up)
    assert results == sorted(results, key=["old", "new"].index)  # old until the switch, new after it
    assert len(results) == (2 if old_layout == "published" else 11)  # legacy: adopt .current + 8 names first
    # the next run cleans what the killed ones left (staging folders, temporary links)
    assert run_prepare(tmp_path, "new", 50) == 0
    assert sorted(glob.glob(str(task_dir / ".prepared-*"))) == [os.path.realpath(task_dir / CURRENT)]
    assert not glob.glob(str(task_dir / "*.tmp-*")) and not glob.glob(str(task_dir / ".*.tmp-*"))


def test_leftovers_of_killed_runs_are_cleaned(tmp_path):
    task_dir = tmp_path / "math"
    task_dir.mkdir()
    dead = 4194999  # above the kernel's pid_max: no such process
    for name in (f"train.bin.tmp-{dead}", f"val_mask.bin.tmp-{dead}", f"meta.json.tmp-{dead}"):
        (task_dir / name).write_bytes(b"half written")
    (task_dir / f".prepared-{dead}-1").mkdir()
    (task_dir / "prepare.py").write_text("# the task's own script stays\n")
    cfg = records.settings([f"--out_dir={tmp_path}", "--progress=False"])
    src = source(tmp_path, "new", 20)
    dataprep.prepare("math", records.resolve_sources(src, TEXT, []), cfg)
    names = sorted(n for n in os.listdir(task_dir) if not n.startswith(".prepared-"))
    assert names == [CURRENT, "meta.json", "prepare.py", "train.bin", "train_docs.bin", "train_mask.bin",
                     "val.bin", "val_docs.bin", "val_mask.bin"]
    assert len(glob.glob(str(task_dir / ".prepared-*"))) == 1
    assert TaskSplit(str(tmp_path), "math", "train").n_docs > 0


def test_legacy_prepared_data_still_load(tmp_path):
    cfg = records.settings([f"--out_dir={tmp_path}", "--progress=False"])
    dataprep.prepare("math", records.resolve_sources(source(tmp_path, "old", 20), TEXT, []), cfg)
    n = TaskSplit(str(tmp_path), "math", "train").n_docs
    legacy_layout(tmp_path / "math")
    assert TaskSplit(str(tmp_path), "math", "train").n_docs == n


def write_split(task_dir, split, docs):
    w = datafiles.SplitWriter(str(task_dir), split)
    for ids, mask in docs:
        w.add(ids, mask)
    w.commit()
    return w


def test_split_files_read_back_as_written(tmp_path):
    docs = [([10, 11, EOT_ID], [0, 1, 1]), ([7, EOT_ID], [1, 1]), ([5, 6, 7, 8, EOT_ID], [0, 0, 0, 1, 1])]
    w = write_split(tmp_path / "math", "train", docs)
    assert (w.n_docs, w.n_tokens, w.n_trained) == (3, 10, 6)
    s = TaskSplit(str(tmp_path), "math", "train")
    assert len(s) == 10 and s.n_docs == 3 and s.meta == {}
    for i, (ids, mask) in enumerate(docs):
        got_ids, got_mask = s.document(i)
        assert got_ids.tolist() == ids and got_mask.tolist() == mask
    assert sorted(os.listdir(tmp_path / "math")) == ["train.bin", "train_docs.bin", "train_mask.bin"]


@pytest.mark.parametrize("ids,mask,message", [
    ([1, 2], [1, 1], r"doc 3: a document must be non-empty and end with end-of-text 50256"),
    ([], [], r"doc 3: a document must be non-empty"),
    ([1, EOT_ID], [1], r"doc 3: mask length 1 != token count 2"),
    ([70000, EOT_ID], [1, 1], r"doc 3: token id 70000 does not fit uint16"),
])
def test_a_bad_document_is_named_and_abort_leaves_nothing(tmp_path, ids, mask, message):
    w = datafiles.SplitWriter(str(tmp_path), "val")
    with pytest.raises(ValueError, match=message):
        w.add(ids, mask, "doc 3")
    w.abort()
    assert os.listdir(tmp_path) == []


def test_missing_or_disagreeing_split_files_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"task 'math': missing .*train.bin.*; run `python data/math/prepare.py` first"):
        TaskSplit(str(tmp_path), "math", "train")
    write_split(tmp_path / "math", "train", [([1, 2, EOT_ID], [1, 1, 1])])
    with open(tmp_path / "math" / "train_mask.bin", "ab") as f:
        f.write(b"\x01")  # one mask byte more than tokens
    with pytest.raises(ValueError, match=r"task 'math' train: tokens, mask and document offsets disagree "
                                         r"\(3 tokens, 4 mask, last offset 3\)"):
        TaskSplit(str(tmp_path), "math", "train")


def test_publish_switches_sets_and_keeps_only_the_current_folder(tmp_path):
    task_dir = str(tmp_path / "math")
    for version, n in (("old", 1), ("new", 2)):
        staging = datafiles.new_staging(task_dir)
        for split in datafiles.SPLITS:
            write_split(staging, split, [([n, EOT_ID], [1, 1])] * n)
        datafiles.write_json_atomic(os.path.join(staging, "meta.json"), {"version": version})
        datafiles.write_eval(staging, [{"question": version, "answer": str(n)}])
        datafiles.publish(task_dir, staging)
        assert datafiles.prepared_dir(task_dir) == os.path.realpath(staging)
        s = TaskSplit(str(tmp_path), "math", "val")
        assert s.n_docs == n and s.meta == {"version": version}
        assert json.loads(open(os.path.join(task_dir, "eval.jsonl")).read())["question"] == version
    assert glob.glob(os.path.join(task_dir, ".prepared-*")) == [staging]  # the old set's folder is gone

