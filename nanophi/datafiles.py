"""
The on-disk layout of prepared data: written by data/<task>/prepare.py (through dataprep.py),
read by train.py and eval.py. One definition of file names, dtypes and checks.

data/<task>/
    train.bin, val.bin            uint16 token ids; documents back to back, each ending in 50256
    train_mask.bin, val_mask.bin  uint8, 1 where the token is a training target (loss), else 0
    train_docs.bin, val_docs.bin  int64 document start offsets, plus the total length at the end
    meta.json                     task, tag, sources and counts, tokens, seed, dedup/decontam counts
    eval.jsonl                    (some tasks) held-out items {"question", "answer"} for eval.py

Writers stream: tokens go to temporary files as documents arrive (bounded memory) and take
their real names only when the split is complete, so an interrupted run never leaves a .bin
that looks finished.

Publishing is one step: data preparation writes every file into a new hidden folder
data/<task>/.prepared-<pid>-<n>/ and then switches the symlink data/<task>/.current to it (one
rename). The names readers open (train.bin, meta.json, ...) are symlinks through .current, so a
kill at any moment leaves the old set or the new set, never a mix. Folders left by an earlier
layout (real files) are adopted first without copying (hard links).
"""
import json
import os
import re
import shutil
import sys
import time

import numpy as np

from nanophi.files import temp_name, write_json_atomic, write_jsonl_atomic, write_text_atomic  # noqa: F401 (writers import them from here too)
from nanophi.tokenizer import EOT_ID

TOKEN_DTYPE = np.uint16
MASK_DTYPE = np.uint8
DOCS_DTYPE = np.int64
SPLITS = ("train", "val")
CURRENT = ".current"      # symlink to the folder holding the current prepared files
STAGING = ".prepared-"    # prefix of those folders
PUBLISHED = ("train.bin", "train_mask.bin", "train_docs.bin", "val.bin", "val_mask.bin", "val_docs.bin",
             "meta.json", "eval.jsonl")


def inputs_targets(tokens, mask):
    """(x, y) of a token window and its loss mask, the one rule train.py and eval.py share: y[t] is
    tokens[t + 1] where mask[t + 1] is 1 (a trained token), else -1 (no loss there)."""
    return tokens[:-1], np.where(mask[1:] == 1, tokens[1:], -1)


def write_eval(task_dir, items):
    """<task_dir>/eval.jsonl ({"question", "answer", "kind"}), atomically."""
    os.makedirs(task_dir, exist_ok=True)
    path = os.path.join(task_dir, "eval.jsonl")
    write_jsonl_atomic(path, items)
    return path


def split_paths(task_dir, split):
    return {
        "tokens": os.path.join(task_dir, f"{split}.bin"),
        "mask": os.path.join(task_dir, f"{split}_mask.bin"),
        "docs": os.path.join(task_dir, f"{split}_docs.bin"),
    }


class SplitWriter:
    """Append documents (ids, mask) to one split; commit() renames the files into place."""

    def __init__(self, task_dir, split):
        os.makedirs(task_dir, exist_ok=True)
        self.paths = split_paths(task_dir, split)
        self.tmp = {k: temp_name(p) for k, p in self.paths.items()}
        self.files = {k: open(p, "wb") for k, p in self.tmp.items()}
        self.n_tokens = 0
        self.n_docs = 0
        self.n_trained = 0
        self.files["docs"].write(np.array([0], dtype=DOCS_DTYPE).tobytes())

    def add(self, ids, mask, where="document"):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0 or ids[-1] != EOT_ID:
            raise ValueError(f"{where}: a document must be non-empty and end with end-of-text {EOT_ID}")
        if len(mask) != ids.size:
            raise ValueError(f"{where}: mask length {len(mask)} != token count {ids.size}")
        if ids.min() < 0 or ids.max() > np.iinfo(TOKEN_DTYPE).max:
            raise ValueError(f"{where}: token id {int(ids.max())} does not fit uint16")
        mask = np.asarray(mask, dtype=MASK_DTYPE)
        self.files["tokens"].write(ids.astype(TOKEN_DTYPE).tobytes())
        self.files["mask"].write(mask.tobytes())
        self.n_tokens += ids.size
        self.n_docs += 1
        self.n_trained += int(mask.sum())
        self.files["docs"].write(np.array([self.n_tokens], dtype=DOCS_DTYPE).tobytes())

    def commit(self):
        for f in self.files.values():
            f.close()
        for k in self.paths:
            os.replace(self.tmp[k], self.paths[k])

    def abort(self):
        for k, f in self.files.items():
            f.close()
            if os.path.exists(self.tmp[k]):
                os.remove(self.tmp[k])


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def clean_leftovers(task_dir):
    """Remove what killed runs left in task_dir: *.tmp-<pid> files and .prepared-<pid>-* folders
    (not the current one) of processes that are gone, and links to files the current set lacks."""
    current = os.path.realpath(os.path.join(task_dir, CURRENT)) if os.path.islink(os.path.join(task_dir, CURRENT)) else None
    for name in os.listdir(task_dir):
        path = os.path.join(task_dir, name)
        m = re.search(r"\.tmp-(\d+)$", name) or re.match(re.escape(STAGING) + r"(\d+)-", name)
        if name in PUBLISHED and os.path.islink(path) and not os.path.exists(path):
            os.remove(path)  # dangling: the current set has no such file
        elif not m or (int(m.group(1)) != os.getpid() and _pid_alive(int(m.group(1)))):
            continue  # not a leftover, or its run is still going
        elif not name.startswith(STAGING):
            os.remove(path)
        elif os.path.realpath(path) != current:
            shutil.rmtree(path, ignore_errors=True)


def new_staging(task_dir, clean=True):
    """A fresh hidden folder in task_dir for one preparation run's files (see publish)."""
    os.makedirs(task_dir, exist_ok=True)
    if clean:
        clean_leftovers(task_dir)
    path = os.path.join(task_dir, f"{STAGING}{os.getpid()}-{time.time_ns()}")
    os.mkdir(path)
    return path


def _pause(step):
    """Tests kill -9 a preparation at each publishing step: with NANOPHI_PUBLISH_PAUSE_AT=k every
    step is announced on stderr and the k-th (from 0) waits a minute before it is taken."""
    at = os.environ.get("NANOPHI_PUBLISH_PAUSE_AT")
    if at:
        _pause.count = getattr(_pause, "count", -1) + 1
        print(f"publish step {_pause.count}: {step}", file=sys.stderr, flush=True)
        if _pause.count == int(at):
            time.sleep(60)


def _symlink(target, link):
    tmp = temp_name(link)
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)  # atomic: the link is the old one or the new one


def _adopt_legacy(task_dir):
    """Real files from before .current existed: move them behind .current without a moment where
    the set is mixed (hard links into a folder, .current to it, then each name becomes a link)."""
    names = [n for n in PUBLISHED if os.path.isfile(os.path.join(task_dir, n)) and not os.path.islink(os.path.join(task_dir, n))]
    if not names or os.path.islink(os.path.join(task_dir, CURRENT)):
        return
    folder = new_staging(task_dir, clean=False)
    for n in names:
        try:
            os.link(os.path.join(task_dir, n), os.path.join(folder, n))
        except OSError:  # a file system without hard links
            shutil.copy2(os.path.join(task_dir, n), os.path.join(folder, n))
    _pause("adopt: .current -> the existing files")
    _symlink(os.path.basename(folder), os.path.join(task_dir, CURRENT))
    for n in names:
        _pause(f"adopt: {n} -> .current/{n}")
        _symlink(os.path.join(CURRENT, n), os.path.join(task_dir, n))


def _can_symlink(task_dir):
    probe = os.path.join(task_dir, f".symlink-probe.tmp-{os.getpid()}")
    try:
        os.symlink(".", probe)
        os.remove(probe)
        return True
    except OSError:
        return False


def _publish_by_rename(task_dir, folder):
    """File systems without symlinks (some network and FUSE mounts): rename file by file, as before."""
    print(f"warning: {task_dir}: no symlinks on this file system; files are renamed into place one by one "
          f"(a kill in between can leave a mix: re-run the preparation then)", file=sys.stderr)
    new = os.listdir(folder)
    for n in PUBLISHED:
        if n not in new and os.path.isfile(os.path.join(task_dir, n)):
            os.remove(os.path.join(task_dir, n))  # the new set has no such file
    for n in new:
        os.replace(os.path.join(folder, n), os.path.join(task_dir, n))
    os.rmdir(folder)


def publish(task_dir, folder):
    """Make folder (from new_staging) the task's prepared data in one rename of the .current link."""
    if not _can_symlink(task_dir):
        return _publish_by_rename(task_dir, folder)
    _adopt_legacy(task_dir)
    for n in sorted(os.listdir(folder)):  # links for new names first: dangling (absent) until the switch
        link = os.path.join(task_dir, n)
        if n in PUBLISHED and not (os.path.islink(link) and os.readlink(link) == os.path.join(CURRENT, n)):
            _pause(f"link {n} -> .current/{n}")
            _symlink(os.path.join(CURRENT, n), link)
    _pause(f".current -> {os.path.basename(folder)}")
    _symlink(os.path.basename(folder), os.path.join(task_dir, CURRENT))
    _pause("clean up")
    clean_leftovers(task_dir)


def prepared_dir(task_dir, split="train"):
    """Where a task's files are: the folder behind .current, or task_dir itself for real files
    (older layout, or SplitWriter used on its own). Resolved once, so a switch cannot mix sets."""
    current = os.path.join(task_dir, CURRENT)
    if os.path.islink(os.path.join(task_dir, f"{split}.bin")) and os.path.islink(current):
        return os.path.realpath(current)
    return task_dir


class TaskSplit:
    """Read-only memmaps of one prepared split: .tokens, .mask, .docs (offsets), .meta."""

    def __init__(self, data_dir, task, split, files=None):
        """files: the folder prepared_dir resolved (pass one for both splits: the same prepared set)."""
        self.task, self.split = task, split
        self.dir = os.path.join(data_dir, task)
        files = files or prepared_dir(self.dir, split)
        paths = split_paths(files, split)
        missing = [p for p in paths.values() if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"task {task!r}: missing {', '.join(missing)}; run "
                                    f"`python data/{task}/prepare.py` first")
        self.tokens = np.memmap(paths["tokens"], dtype=TOKEN_DTYPE, mode="r")
        self.mask = np.memmap(paths["mask"], dtype=MASK_DTYPE, mode="r")
        self.docs = np.fromfile(paths["docs"], dtype=DOCS_DTYPE)
        if len(self.mask) != len(self.tokens) or self.docs[-1] != len(self.tokens):
            raise ValueError(f"task {task!r} {split}: tokens, mask and document offsets disagree "
                             f"({len(self.tokens)} tokens, {len(self.mask)} mask, last offset {self.docs[-1]})")
        meta_path = os.path.join(files, "meta.json")
        self.meta = json.load(open(meta_path)) if os.path.isfile(meta_path) else {}

    def __len__(self):
        return len(self.tokens)

    @property
    def n_docs(self):
        return len(self.docs) - 1

    def document(self, i):
        a, b = int(self.docs[i]), int(self.docs[i + 1])
        return np.asarray(self.tokens[a:b], dtype=np.int64), np.asarray(self.mask[a:b], dtype=np.int64)
