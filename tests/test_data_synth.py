"""
data/synthesize.py end to end against a real serve.py on loopback (a tiny random checkpoint), through the
real openai client: generation, kill -9 midway and rerun (no duplicate, nothing lost), endpoint down,
wrong key; then the replies prepared as a textbook source and as code exercises.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nanophi import synth
from nanophi.llm import load_done
from test_serve import Server, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "synth-key-456"


@pytest.fixture(scope="module")
def servers(tiny_out_dir_1k, tmp_path_factory):
    logs = tmp_path_factory.mktemp("synth_serve_logs")
    open_srv = Server([f"--out_dir={tiny_out_dir_1k}", "--max_batch=8"], str(logs / "open.log"))
    auth_srv = Server([f"--out_dir={tiny_out_dir_1k}"], str(logs / "auth.log"), env={"NANOPHI_API_KEY": KEY})
    try:
        yield open_srv.wait(), auth_srv.wait()
    finally:
        open_srv.stop()
        auth_srv.stop()


def synthesize(args, env=None, **kw):
    return subprocess.run([sys.executable, "data/synthesize.py", "--progress=False", *args], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}, timeout=300, **kw)


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def test_dry_run_prints_every_prompt_and_calls_nothing(tmp_path):
    out = tmp_path / "t.jsonl"
    r = synthesize(["--max_docs=5", "--dry_run=True", f"--out={out}", "--base_url=http://127.0.0.1:9/v1"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Write a section of a textbook about") == 5
    assert not out.exists()
    reqs = synth.build_requests("textbook", synth.load_seeds(), "nanophi", 5, 700, 0.8)
    assert all(q["key"] in r.stdout for q in reqs)


def test_seed_combinations_are_distinct_and_span_the_lists():
    seeds = synth.load_seeds()
    combos = synth.combinations("exercise", seeds)
    assert len(combos) == len(seeds["topics"]) * len(seeds["audiences"]) * len(seeds["exercise_kinds"])
    assert len({tuple(c.values()) for c in combos}) == len(combos)
    first50 = combos[:50]
    assert len({c["topic"] for c in first50}) > 15  # shuffled: 50 prompts are not one topic's


@pytest.mark.slow
def test_kill_midway_then_rerun_no_duplicates_nothing_lost(servers, tmp_path):
    srv = servers[0]
    out = tmp_path / "textbooks.jsonl"
    args = ["--max_docs=16", "--concurrency=2", "--max_tokens=120", f"--out={out}", f"--base_url={srv.url}/v1"]
    p = subprocess.Popen([sys.executable, "data/synthesize.py", "--progress=False", *args], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 120 and (not out.exists() or len(out.read_bytes().splitlines()) < 3):
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = load_done(str(out))
    assert 3 <= len(before) < 16, "the kill must land midway"
    r = synthesize(args)
    assert r.returncode == 0, r.stderr
    assert f"{len(before)} from before, {16 - len(before)} new" in r.stdout
    after = lines(out)
    keys = [x["key"] for x in after]
    assert len(keys) == len(set(keys)) == 16
    for k, rec in before.items():  # what finished before the kill is kept as it was
        assert next(x for x in after if x["key"] == k) == rec
    assert all(x["usage"]["completion_tokens"] > 0 and x["text"] for x in after)
    r = synthesize(args)  # a third run asks nothing
    assert "16/16 done (16 from before, 0 new" in r.stdout
    assert len(lines(out)) == 16


def test_torn_last_line_is_cut_and_redone(tmp_path):
    path = tmp_path / "r.jsonl"
    good = json.dumps({"key": "a", "text": "x", "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    path.write_text(good + "\n" + '{"key": "b", "te')
    done = load_done(str(path))
    assert list(done) == ["a"]
    assert path.read_text() == good + "\n"


@pytest.mark.slow
def test_endpoint_down_clear_error_and_resumable(tmp_path, servers):
    out = tmp_path / "t.jsonl"
    down = f"http://127.0.0.1:{free_port()}/v1"
    r = synthesize(["--max_docs=3", f"--out={out}", f"--base_url={down}", "--max_retries=1", "--timeout=5"])
    assert r.returncode == 1
    assert "cannot reach the endpoint" in r.stderr and "rerun the same command to resume" in r.stderr
    assert "Traceback" not in r.stderr
    r = synthesize(["--max_docs=3", f"--out={out}", f"--base_url={servers[0].url}/v1", "--max_tokens=20"])
    assert r.returncode == 0, r.stderr
    assert len(lines(out)) == 3


@pytest.mark.slow
def test_wrong_key_clear_error(servers, tmp_path):
    out = tmp_path / "t.jsonl"
    args = ["--max_docs=2", f"--out={out}", f"--base_url={servers[1].url}/v1", "--max_tokens=20",
            "--api_key_env=OPENAI_API_KEY"]  # named: a local base_url gets the environment's key only then
    r = synthesize(args, env={"OPENAI_API_KEY": "wrong"})
    assert r.returncode == 1 and "API key was refused" in r.stderr and "OPENAI_API_KEY" in r.stderr
    assert "Traceback" not in r.stderr
    r = synthesize(args, env={"OPENAI_API_KEY": KEY})
    assert r.returncode == 0, r.stderr
    assert len(lines(out)) == 2


def test_bad_settings_exit_2_before_any_call(tmp_path):
    r = synthesize(["--kind=poem", "--base_url=http://127.0.0.1:9/v1"])
    assert r.returncode == 2 and "kind='poem'" in r.stderr
    bad = tmp_path / "seeds.json"
    bad.write_text('{"topics": []}')
    r = synthesize([f"--seeds={bad}"])
    assert r.returncode == 2 and "'topics' must be a non-empty list" in r.stderr


@pytest.mark.slow
def test_generated_textbooks_prepare_as_a_source(servers, tmp_path):
    out = tmp_path / "textbooks.jsonl"
    r = synthesize(["--max_docs=6", "--max_tokens=80", f"--out={out}", f"--base_url={servers[0].url}/v1"])
    assert r.returncode == 0, r.stderr
    p = subprocess.run([sys.executable, "data/textbook/prepare.py", f"--source={out}", f"--out_dir={tmp_path}",
                        "--progress=False", "--near_dedup=False"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    meta = json.load(open(tmp_path / "textbook" / "meta.json"))
    assert meta["records"] == 6
    kept = sum(s["documents"] for s in meta["splits"].values())
    assert kept + meta["dedup"]["exact"] + meta["decontamination"]["humaneval"] == 6


@pytest.mark.slow
def test_parse_exercise_and_code_prepare(tmp_path):
    reply = ('Here you go:\n```python\ndef add_all(xs: list[int]) -> int:\n    """Sum xs.\n\n    >>> add_all([1, 2])\n'
             '    3\n    """\n    total = 0\n    for x in xs:\n        total += x\n    return total\n```\nDone.')
    parts = synth.parse_exercise(reply)
    assert parts["exercise"].startswith("def add_all(") and parts["exercise"].rstrip().endswith('"""')
    assert parts["solution"].splitlines()[0] == "    total = 0" and "return total" in parts["solution"]
    assert synth.parse_exercise("no code at all, just words") is None
    src = tmp_path / "exercises.jsonl"
    rows = [{"key": f"k{i}", "kind": "exercise", "exercise_kind": "x", "text": reply.replace("add_all", name)}
            for i, name in enumerate(["add_all", "sum_list", "total_of"])]
    rows.insert(1, {"key": "bad", "kind": "exercise", "exercise_kind": "x", "text": "gibberish without a function"})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = subprocess.run([sys.executable, "data/code/prepare.py", f"--source={src}", f"--out_dir={tmp_path}",
                        "--progress=False", "--skip_bad=True"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    meta = json.load(open(tmp_path / "code" / "meta.json"))
    assert meta["skipped"] == 1 and "no Python function" in meta["skipped_examples"][0]
    import numpy as np
    from nanophi.tokenizer import decode
    ids = np.concatenate([np.fromfile(tmp_path / "code" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    mask = np.concatenate([np.fromfile(tmp_path / "code" / f"{s}_mask.bin", dtype=np.uint8) for s in ("train", "val")])
    trained = decode([int(i) for i, m in zip(ids, mask) if m])
    assert meta["records"] == 4 and sum(v["documents"] for v in meta["splits"].values()) == 3
    assert trained.count("total = 0") == 3 and "Sum xs." not in trained  # the solution is trained, the docstring prompt not
