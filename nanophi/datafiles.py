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
"""
import json
import os

import numpy as np

from nanophi.files import temp_name, write_json_atomic, write_text_atomic  # noqa: F401 (writers import them from here too)
from nanophi.tokenizer import EOT_ID

TOKEN_DTYPE = np.uint16
MASK_DTYPE = np.uint8
DOCS_DTYPE = np.int64
SPLITS = ("train", "val")


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


class TaskSplit:
    """Read-only memmaps of one prepared split: .tokens, .mask, .docs (offsets), .meta."""

    def __init__(self, data_dir, task, split):
        self.task, self.split = task, split
        self.dir = os.path.join(data_dir, task)
        paths = split_paths(self.dir, split)
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
        meta_path = os.path.join(self.dir, "meta.json")
        self.meta = json.load(open(meta_path)) if os.path.isfile(meta_path) else {}

    def __len__(self):
        return len(self.tokens)

    @property
    def n_docs(self):
        return len(self.docs) - 1

    def document(self, i):
        a, b = int(self.docs[i]), int(self.docs[i + 1])
        return np.asarray(self.tokens[a:b], dtype=np.int64), np.asarray(self.mask[a:b], dtype=np.int64)
