"""nanophi/files.py: atomic file and directory writes keep the old version when a write fails, and
their errors name the file."""
import json
import os

import pytest

from nanophi import files


def test_atomic_file_and_dir_keep_the_old_version_on_failure(tmp_path):
    from nanophi.files import WriteError, atomic_dir, atomic_file, write_text_atomic
    path = str(tmp_path / "a.txt")
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed mid-write")
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["a.txt"]
    folder = str(tmp_path / "adapter")
    with atomic_dir(folder) as tmp:
        open(os.path.join(tmp, "w.bin"), "w").write("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(folder) as tmp:
            open(os.path.join(tmp, "w.bin"), "w").write("2")
            raise RuntimeError("killed mid-write")
    assert open(os.path.join(folder, "w.bin")).read() == "1"
    with atomic_dir(folder) as tmp:  # replaced whole: the old folder's files do not linger
        open(os.path.join(tmp, "other.bin"), "w").write("3")
    assert os.listdir(folder) == ["other.bin"] and sorted(os.listdir(tmp_path)) == ["a.txt", "adapter"]
    assert oct(os.stat(folder).st_mode & 0o777) != oct(0o700)  # ordinary output, not a private temp dir
    with pytest.raises(WriteError, match=r"could not write .*nofile/x.txt: File exists"):
        open(tmp_path / "nofile", "w").close()
        write_text_atomic(str(tmp_path / "nofile" / "x.txt"), "x")


def test_write_jsonl_atomic_keeps_the_old_file_when_a_row_fails(tmp_path):
    path = str(tmp_path / "eval.jsonl")
    files.write_jsonl_atomic(path, [{"question": "é?", "answer": "1"}])
    before = open(path, encoding="utf-8").read()
    assert before == '{"question": "é?", "answer": "1"}\n'  # UTF-8 kept, not \\u escapes

    def rows():
        yield {"question": "fine", "answer": "2"}
        yield {"question": object()}  # not JSON: the write fails part way

    with pytest.raises(TypeError):
        files.write_jsonl_atomic(path, rows())
    assert open(path, encoding="utf-8").read() == before and os.listdir(tmp_path) == ["eval.jsonl"]
    files.write_json_atomic(str(tmp_path / "meta.json"), {"b": 1, "a": [2]})
    assert json.load(open(tmp_path / "meta.json")) == {"b": 1, "a": [2]}


def test_a_failure_after_the_rename_point_is_not_swallowed(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(files.WriteError, match=r"could not write .*out.bin: No such file or directory"):
        with files.atomic_file(str(path)) as tmp:
            pass  # nothing written at tmp: the rename has nothing to move
    assert not path.exists() and os.listdir(tmp_path) == []


def test_atomic_dir_without_rename_exchange_and_after_a_killed_run(tmp_path, monkeypatch):
    folder = str(tmp_path / "adapter")
    with files.atomic_dir(folder) as tmp:
        open(os.path.join(tmp, "w.bin"), "w").write("1")
    # what a run with this pid killed mid-write left: a half temp folder and a set-aside old one
    os.mkdir(files.temp_name(folder))
    os.mkdir(files.temp_name(folder, "old"))
    monkeypatch.setattr(files, "exchange", lambda a, b: False)  # as on a kernel without renameat2
    with files.atomic_dir(folder) as tmp:
        assert os.listdir(tmp) == []  # a fresh folder, not the killed run's
        open(os.path.join(tmp, "w.bin"), "w").write("2")
    assert open(os.path.join(folder, "w.bin")).read() == "2"
    assert os.listdir(tmp_path) == ["adapter"]


def test_exchange_swaps_two_folders_or_says_it_cannot(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").write_text("")
    if not files.exchange(str(a), str(b)):
        assert (a / "from_a").exists()  # nothing moved: the caller falls back to two renames
        pytest.skip("this kernel or file system has no RENAME_EXCHANGE")
    assert os.listdir(a) == [] and os.listdir(b) == ["from_a"]
