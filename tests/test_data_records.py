"""nanophi/records.py: sources that are bad say what is wrong with them, and where; which schema and hub
files a source resolves to; field errors of the chat mapping name the field."""
import json
import os
import subprocess
import sys

import pytest

from nanophi import records, textformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = [records.Schema("text", ["text"], lambda r: [textformat.textbook(records.need(r, "text"))])]


def load(task):
    return records.load_prepare(task)


def run(task, tmp_path, *args):
    return load(task).main([f"--out_dir={tmp_path}", "--progress=False", *args])


def jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def first_record(spec, max_mb=0):
    (src,) = records.resolve_sources(spec, TEXT, [], max_mb=max_mb)
    where, rec = next(iter(src.records()))
    return where, rec


def test_only_record_too_big_says_so(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": "word " * 2000}) + "\n")
    with pytest.raises(records.DataError, match=r"big\.jsonl:1: record of 0\.0 MB, more than max_record_mb=0\.001"):
        records.resolve_sources(str(path), TEXT, [], max_mb=0.001)


@pytest.mark.parametrize("name", ["nul.txt", "nul.jsonl"])
def test_only_record_with_nul_bytes_says_so(tmp_path, name):
    path = tmp_path / name
    body = b"some text\x00\x00 more\n" if name.endswith(".txt") else b'{"text": "a\x00b"}\n'
    path.write_bytes(body)
    with pytest.raises(records.DataError, match=rf"{name}:1: NUL byte at column \d+"):
        records.resolve_sources(str(path), TEXT, [])


def test_nul_bytes_are_bad_records(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"a good first document\n<|endoftext|>\nbinary\x00junk\n<|endoftext|>\nthe last one\n")
    got = list(records.read_text(str(path)))
    assert got[0][1] == {"text": "a good first document\n"} and got[2][1] == {"text": "the last one\n"}
    assert isinstance(got[1][1], records.DataError) and str(got[1][1]).startswith(f"{path}:3: NUL byte at column 7")


@pytest.mark.parametrize("name", ["bom.txt", "bom.jsonl"])
def test_bom_is_stripped(tmp_path, name):
    path = tmp_path / name
    text = "A first line about rivers.\n"
    path.write_bytes(b"\xef\xbb\xbf" + (text if name.endswith(".txt") else json.dumps({"text": text}) + "\n").encode())
    assert first_record(str(path)) == (f"{path}:1", {"text": text})


def test_directory_as_source_says_so(tmp_path):
    d = tmp_path / "corpus.jsonl"
    d.mkdir()
    for spec in (str(d), str(tmp_path)):
        with pytest.raises(records.DataError, match=r": is a directory, not a file"):
            records.resolve_sources(spec, TEXT, [])


def test_symlink_loop_says_so(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b.jsonl"
    os.symlink(b, a)
    os.symlink(a, b)
    for spec in (str(a), str(b)):
        with pytest.raises(records.DataError, match=r": symlink loop"):
            records.resolve_sources(spec, TEXT, [])
    gone = tmp_path / "gone.jsonl"
    os.symlink(tmp_path / "nowhere.jsonl", gone)
    with pytest.raises(records.DataError, match=r"gone\.jsonl: broken symlink to .*nowhere\.jsonl"):
        records.resolve_sources(str(gone), TEXT, [])


def test_path_with_a_comma(tmp_path):
    path = tmp_path / "rivers, lakes.jsonl"
    path.write_text(json.dumps({"text": "About rivers."}) + "\n")
    other = tmp_path / "x.jsonl"
    other.write_text(json.dumps({"text": "About hills."}) + "\n")
    assert records.source_parts(r"offline,a\,b.jsonl, c ") == ["offline", "a,b.jsonl", "c"]
    assert first_record(str(path))[1] == {"text": "About rivers."}   # the whole value names a file
    escaped = str(path).replace(",", r"\,")
    srcs = records.resolve_sources(f"{escaped},{other}", TEXT, [])
    assert [next(iter(s.records()))[1]["text"] for s in srcs] == ["About rivers.", "About hills."]


def test_prepare_script_names_the_directory(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    r = subprocess.run([sys.executable, "data/textbook/prepare.py", f"--source={d}", f"--out_dir={tmp_path / 'out'}",
                        "--progress=False"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{d}: is a directory, not a file" in r.stderr.strip().splitlines()[-1]


def test_schema_detection_and_unknown_source(tmp_path):
    (tmp_path / "odd.jsonl").write_text('{"title": "x", "body": "y"}\n')
    with pytest.raises(records.DataError, match=r"odd.jsonl: the first record's fields \['body', 'title'\] match no schema.*"
                                                 r"meta-math/MetaMathQA \['query', 'response'\]"):
        run("math", tmp_path, f"--source={tmp_path / 'odd.jsonl'}")
    with pytest.raises(records.DataError, match="not 'offline', 'hub', a known hub dataset"):
        run("math", tmp_path, "--source=nowhere/nothing")
    # hub names resolve to the datasets mapping (not opened here: no network in tests)
    srcs = records.resolve_sources("hub", load("chat").SCHEMAS, [])
    assert [s.name for s in srcs] == ["bavard/personachat_truecased", "AlekseyKorshuk/persona-chat", "PygmalionAI/PIPPA"]
    # hub sources are pinned data files, never a loading script
    assert [(s.hub.repo, s.hub.path()) for s in load("code").SCHEMAS if s.hub] == [
        ("code-search-net/code_search_net", "hf://datasets/code-search-net/code_search_net/data/python.zip"),
        ("garage-bAInd/Open-Platypus",
         "hf://datasets/garage-bAInd/Open-Platypus@refs/convert/parquet/default/train/*.parquet")]


def test_bad_chat_turns_name_the_field(tmp_path):
    chat = records.load_prepare("chat")
    path = jsonl(tmp_path / "c.jsonl", [
        {"id": "a", "system": None, "turns": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"id": "b", "system": None, "turns": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}])
    with pytest.raises(records.DataError, match=r"c\.jsonl:2: field 'turns\[1\]\.role': must be 'user' or 'assistant', got 'robot'"):
        chat.main([f"--out_dir={tmp_path}", "--progress=False", f"--source={path}"])
    jsonl(tmp_path / "c.jsonl", [{"id": "b", "system": None, "turns": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ["x"]}]}])
    with pytest.raises(records.DataError, match=r"c\.jsonl:1: field 'turns\[1\]\.content': expected str, got list"):
        chat.main([f"--out_dir={tmp_path}", "--progress=False", f"--source={path}"])
