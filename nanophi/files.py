"""
Atomic writes, one definition for every writer (checkpoints, adapters, exports, tokenizer files,
plots, data): write under a temporary name in the same directory, then rename. A reader, or a
run resumed after kill -9, sees the old file or the new one, never half of one.

    with atomic_file(path) as tmp:      # a file
        torch.save(state, tmp)
    with atomic_dir(path) as tmp:       # a directory: filled, then swapped in whole
        model.save_pretrained(tmp)
"""
import contextlib
import ctypes
import json
import os
import shutil


class WriteError(OSError):
    """A write that failed (disk full, read-only, too large), with a message naming the file."""

    def __str__(self):
        return self.strerror  # the whole message, without OSError's "[Errno 28]" prefix


def temp_name(path, kind="tmp"):
    """A name beside path that only this process uses."""
    return f"{path}.{kind}-{os.getpid()}"


def write_error(path, err):
    """WriteError naming path, what went wrong and the free space left where it was going."""
    parent = os.path.dirname(os.path.abspath(path))
    reason = err.strerror or str(err)
    try:
        free = f"; {shutil.disk_usage(parent).free / 2**20:,.0f} MiB free there"
    except OSError:
        free = ""
    return WriteError(err.errno, f"could not write {path}: {reason}{free}")


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary path beside path; it takes path's name when the block ends without error
    and is removed otherwise. OS errors become a WriteError naming path."""
    tmp = temp_name(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise (e if isinstance(e, WriteError) else write_error(path, e)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def exchange(a, b):
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or file system cannot, and the caller falls back to two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def atomic_dir(path):
    """Yields a new empty directory beside path; when the block ends without error it replaces path
    in one rename-exchange where the kernel allows (else old aside, new in, old removed) and is
    removed otherwise."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp, old = temp_name(path), temp_name(path, "old")
    for leftover in (tmp, old):
        if os.path.isdir(leftover):
            shutil.rmtree(leftover)
    try:
        os.mkdir(tmp)  # not mkdtemp: that makes it private (0700), and this is ordinary output
        yield tmp
        if not os.path.exists(path):
            os.replace(tmp, path)
        elif exchange(tmp, path):  # the new directory in, the old one out, in one step
            shutil.rmtree(tmp)
        else:  # a kill between these two renames leaves the old directory at `old`
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise (e if isinstance(e, WriteError) else write_error(path, e)) from None
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path, text):
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def jsonl_line(obj):
    """One JSONL line: UTF-8 text kept as is (not \\u escapes)."""
    return json.dumps(obj, ensure_ascii=False) + "\n"


def write_jsonl_atomic(path, rows):
    write_text_atomic(path, "".join(jsonl_line(r) for r in rows))
