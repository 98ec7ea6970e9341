"""Hub sources as they really are, read through their real loaders (datasets.load_dataset for parquet
and JSON lines, ijson for JSON arrays, zipfile+gzip for CodeSearchNet) from a local mirror laid out
like the hub (--hub_root=<dir>: <dir>/<owner>/<name>/<file>), in each dataset's own file format."""
import gzip
import math
import json
import os
import subprocess
import sys
import tracemalloc
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import split_texts as texts
from nanophi import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(task, out, mirror, *args):
    return records.load_prepare(task).main([f"--out_dir={out}", "--progress=False", f"--hub_root={mirror}", *args])


def put(mirror, repo, files, write):
    """Write one file of a hub repository into the mirror (dirs made)."""
    path = os.path.join(mirror, repo, files)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write(path)
    return path


def parquet(rows):
    return lambda path: pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)


def json_array(rows):
    # pretty-printed like MetaMathQA-395K.json: one array, items over many lines
    return lambda path: open(path, "w").write(json.dumps(rows, indent=4))


def jsonl(rows):
    return lambda path: open(path, "w").write("".join(json.dumps(r) + "\n" for r in rows))


def test_textbooks_from_parquet_conversion(tmp_path):
    m = tmp_path / "hub"
    put(m, "nampdn-ai/tiny-textbooks", "default/train/0000.parquet",
        parquet([{"text": f"web text {i}", "textbook": f"Lesson {i}: photosynthesis turns light into sugar, step {i}."}
                 for i in range(5)]))
    put(m, "SciPhi/textbooks-are-all-you-need-lite", "default/train/0000.parquet",
        parquet([{"formatted_prompt": "p", "completion": f"Chapter {i}: binary search halves the range each time {i}.",
                  "first_task": "x"} for i in range(4)]))
    meta = run("textbook", tmp_path / "out", m, "--source=hub", "--near_dedup=False")
    assert meta["sources"] == {"nampdn-ai/tiny-textbooks": 5, "SciPhi/textbooks-are-all-you-need-lite": 4}
    assert all(t.startswith("[Textbook] ") for t, _ in texts(tmp_path / "out", "textbook"))


def test_metamathqa_json_array_streams_with_bounded_memory(tmp_path):
    m = tmp_path / "hub"
    row = {"query": "What is 6 + 6?", "response": "6 + 6 = 12. " * 40 + "The answer is: 12", "type": "GSM_Rephrased",
           "original_question": "What is 6 + 6?"}
    n = 20000  # ~12 MB of JSON: parsed whole it would take well over 12 MB of Python objects
    path = put(m, "meta-math/MetaMathQA", "MetaMathQA-395K.json",
               json_array([dict(row, query=f"What is {i} + {i}?") for i in range(n)]))
    assert os.path.getsize(path) > 10e6
    hub = records.load_prepare("math").SCHEMAS[0].hub
    tracemalloc.start()
    count = sum(1 for _ in records.read_hub(hub, str(m)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == n
    assert peak < 2e6, f"peak {peak / 1e6:.1f} MB while streaming a {os.path.getsize(path) / 1e6:.0f} MB array"
    meta = run("math", tmp_path / "out", m, "--source=meta-math/MetaMathQA", "--source_caps={'meta-math/MetaMathQA': 50}",
               "--n_eval=20")
    assert meta["records_read"] == {"meta-math/MetaMathQA": 50}     # the per-source cap stops the stream early
    full, trained = texts(tmp_path / "out", "math")[0]
    assert full.startswith("[Math] What is ") and trained.endswith("The answer is: 12<|endoftext|>")


def test_truncated_stream_is_one_line(tmp_path):
    m = tmp_path / "hub"
    path = put(m, "meta-math/MetaMathQA", "MetaMathQA-395K.json",
               json_array([{"query": f"q{i}", "response": f"The answer is: {i}"} for i in range(30)]))
    data = open(path).read()
    open(path, "w").write(data[: len(data) // 2])  # a download cut off midway
    with pytest.raises(records.SourceUnavailable, match=r"^hub dataset meta-math/MetaMathQA stream failed after 1[0-9] "
                                                         r"records .*--skip_unavailable=True"):
        run("math", tmp_path / "out", m, "--source=hub", "--n_eval=20")
    assert not os.path.exists(tmp_path / "out" / "math" / "train.bin")   # nothing half-written


def pippa_row(i, conversation):
    return {"submission_timestamp": 1673000000000 + i, "categories": None if i == 0 else ["Fantasy"], "bot_id": f"b{i}",
            "bot_name": "Aria", "bot_greeting": "Greetings.", "bot_definitions": None if i == 0 else
            "{{char}}: Hello {{random_user_1}}!\n{{u01}}: Hi.\nEND_OF_DIALOG\n{{char}}: Welcome back, {{user}}.",
            "bot_description": "A cheerful bard.", "conversation": conversation}


def test_pippa_jsonl_through_datasets_and_placeholders_cleaned(tmp_path):
    m = tmp_path / "hub"
    conv = [{"message": "Greetings, {{user}}. Care for a song?", "is_human": False},
            {"message": "Sure.", "is_human": True}, {"message": "*strums the lute*", "is_human": False}]
    put(m, "PygmalionAI/PIPPA", "pippa_deduped.jsonl", jsonl([pippa_row(i, conv[: 1 + i % 3]) for i in range(6)]))
    meta = run("roleplay", tmp_path / "out", m, "--source=hub", "--near_dedup=False")
    assert sum(meta["sources"].values()) == 3      # three distinct conversations (null fields in row 0 read fine)
    joined = "\n".join(t for t, _ in texts(tmp_path / "out", "roleplay"))
    assert "Aria: Hello User!\nUser: Hi.\n\nAria: Welcome back, User." in joined   # END_OF_DIALOG: a blank line
    for leftover in ("{{", "END_OF_DIALOG", "random_user"):
        assert leftover not in joined


def test_pippa_dict_of_lists_shape(tmp_path):
    # what PIPPA's loading script delivered (datasets' Sequence of a dict): {message: [...], is_human: [...]}
    rows = [pippa_row(1, {"message": ["Hi, {{user}}.", "Hello!", "Good to see you."], "is_human": [False, True, False]}),
            pippa_row(2, {"message": ["Back again?"], "is_human": [False]})]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run("roleplay", tmp_path / "out", tmp_path, f"--source={tmp_path / 'p.jsonl'}", "--styles=['nanophi']")
    full, trained = [d for d in texts(tmp_path / "out", "roleplay") if "Hello!" in d[0]][0]
    assert "\nUser: Hello!\nAria:" in full and trained == " Hi, User.<|endoftext|> Good to see you.<|endoftext|>"


PERSONA = [["i love hiking.", "i have a cat named felix."], ["i play the violin.", "i live in a big city."]]
DIALOGUES = [["__ SILENCE __", "hello! i just came back from a hike.", "do you have pets?",
              "yes, felix sleeps all day, lucky cat."],
             ["hi, what do you do?", "i'm a violinist in the city orchestra .", "wow, that's cool !",
              "thanks , i practice every day ."]]


def persona_record(persona, dialogue, truecase):
    # the truecased copy: capitalised and detokenised ("day ." -> "Day."); the lowercase copy as published
    fix = (lambda s: s.replace(" .", ".").replace(" ,", ",").replace(" !", "!").capitalize()) if truecase else str
    utts = [{"candidates": ["no.", fix(dialogue[j])], "history": [fix(h) for h in dialogue[:j]]}
            for j in range(1, len(dialogue), 2)]
    return {"personality": [fix(p) for p in persona], "utterances": utts}


def test_personachat_copies_deduplicated_and_silence_dropped(tmp_path):
    m = tmp_path / "hub"
    put(m, "bavard/personachat_truecased", "personachat_truecased_full_train.json",
        json_array([persona_record(p, d, True) for p, d in zip(PERSONA, DIALOGUES)]))
    put(m, "AlekseyKorshuk/persona-chat", "default/train/0000.parquet",
        parquet([persona_record(p, d, False) for p, d in zip(PERSONA, DIALOGUES)]))
    # PIPPA is not in the mirror: with --skip_unavailable the other sources still run
    meta = run("chat", tmp_path / "out", m, "--source=hub", "--skip_unavailable=True")
    assert meta["records_read"] == {"bavard/personachat_truecased": 2, "AlekseyKorshuk/persona-chat": 2,
                                    "PygmalionAI/PIPPA": 0}
    assert meta["sources"]["bavard/personachat_truecased"] == 2 and meta["sources"]["AlekseyKorshuk/persona-chat"] == 0
    assert meta["dedup"]["exact"] == 2                     # the lowercase copies of both dialogues
    assert list(meta["unavailable"]) == ["PygmalionAI/PIPPA"] and "has no" in meta["unavailable"]["PygmalionAI/PIPPA"]
    docs = texts(tmp_path / "out", "chat")
    assert not any("SILENCE" in t for t, _ in docs)
    opener = [t for t, _ in docs if "named felix" in t][0]        # the bot opens when the partner was silent
    assert "[System]: Your persona: I love hiking." in opener and "\n[Bot]: Hello! i just came back" in opener


def test_open_platypus_routed_by_data_source(tmp_path):
    m = tmp_path / "hub"
    rows = [("MATH/PRM-800K", "Compute 2+3.", "5"), ("theoremqa", "Is 7 prime?", "True"),
            ("leetcode_ne", "Return the sum of a list.", "def total(xs):\n    return sum(xs)"),
            ("tigerbot-kaggle", "Reverse a string.", "def rev(s):\n    return s[::-1]"),
            ("reclor", "All A are B. x is A. Is x B?", "Yes."), ("scienceqa", "Which is a gas? oxygen or iron", "oxygen"),
            ("guanaco", "Write a poem.", "Roses..."), ("airoboros", "Tell a joke.", "Knock knock.")]
    put(m, "garage-bAInd/Open-Platypus", "default/train/0000.parquet",
        parquet([{"input": "", "output": o, "instruction": q, "data_source": d} for d, q, o in rows]))
    got = {}
    for task, extra in (("math", ["--n_eval=20"]), ("logic", ["--n_eval=20"]), ("code", [])):
        meta = run(task, tmp_path / task, m, "--source=garage-bAInd/Open-Platypus", *extra)
        got[task] = sorted(t for t, _ in texts(tmp_path / task, task))
        assert meta["routed_to_other_tasks"] == len(rows) - len(got[task])
    assert [t.split("\n")[0] for t in got["math"]] == ["[Math] Compute 2+3.", "[Math] Is 7 prime?"]
    assert [t.split("\n")[0] for t in got["logic"]] == ["[Logic] All A are B. x is A. Is x B?",
                                                        "[Logic] Which is a gas? oxygen or iron"]
    assert got["code"] == ['[Code] """Return the sum of a list."""\ndef total(xs):\n    return sum(xs)<|endoftext|>',
                           '[Code] """Reverse a string."""\ndef rev(s):\n    return s[::-1]<|endoftext|>']
    assert not any("poem" in t or "joke" in t for ts in got.values() for t in ts)   # guanaco/airoboros dropped


def test_code_search_net_zip_of_gzipped_jsonl(tmp_path):
    m = tmp_path / "hub"
    fn = "def clamp(value, low, high):\n    \"\"\"Limit value to [low, high].\"\"\"\n    return max(low, min(value, high))\n"
    rows = [{"repo": "a/b", "path": "m.py", "func_name": f"clamp{i}", "original_string": fn.replace("clamp", f"clamp{i}"),
             "language": "python", "code": fn.replace("clamp", f"clamp{i}"), "code_tokens": [],
             "docstring": "Limit value to [low, high].", "docstring_tokens": [], "sha": "0", "partition": "train",
             "url": "u"} for i in range(3)]

    def write(path):
        with zipfile.ZipFile(path, "w") as z:
            for k in range(2):  # two train members, and a valid member that must not be read
                z.writestr(f"python/final/jsonl/train/python_train_{k}.jsonl.gz",
                           gzip.compress("".join(json.dumps(r) + "\n" for r in rows[k::2]).encode()))
            z.writestr("python/final/jsonl/valid/python_valid_0.jsonl.gz", gzip.compress(b'{"bad": 1}\n'))
    put(m, "code-search-net/code_search_net", "data/python.zip", write)
    meta = run("code", tmp_path / "out", m, "--source=code-search-net/code_search_net", "--near_dedup=False")
    assert meta["records_read"] == {"code-search-net/code_search_net": 3}
    assert meta["sources"] == {"code-search-net/code_search_net": 6}   # both code shapes per function
    assert any(t.startswith('[Code] """Limit value to [low, high]."""\ndef clamp1(') for t, _ in texts(tmp_path / "out", "code"))


def prepare_cli(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_unreachable_hub_is_one_line_offline(tmp_path):
    # HF_HUB_OFFLINE=1: the real hub path (hf://datasets/...) fails at once, with one line and the fix
    r = prepare_cli("data/textbook/prepare.py", "--source=hub", f"--out_dir={tmp_path}", "--progress=False",
                    env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: hub dataset nampdn-ai/tiny-textbooks is unreachable") and "--skip_unavailable=True" in last
    # a repository that does not exist, in a mirror: named, with the path tried
    r = prepare_cli("data/math/prepare.py", "--source=hub", f"--out_dir={tmp_path}", "--progress=False",
                    f"--hub_root={tmp_path / 'empty'}", "--skip_unavailable=True")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "skipped: hub dataset meta-math/MetaMathQA has no " in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: task math: no documents left")


def test_near_dedup_index_is_bounded():
    near = records.NearDedup(0.8, max_docs=2)
    docs = [" ".join(f"w{k}{i}" for i in range(40)) for k in range(3)]
    assert [near.is_dup(d) for d in docs] == [False, False, False]
    assert near.n == 2                                   # the third was checked, not added
    assert near.is_dup(docs[0] + " extra")               # copies of indexed documents are still caught
    assert not near.is_dup(docs[2] + " extra")           # the price of the bound, documented in docs/data.md


@pytest.mark.slow
def test_budget_caps_sized_to_the_run(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("prepare_all", os.path.join(ROOT, "data", "prepare_all.py"))
    prepare_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_all)
    # the Colab run: 200 x 4 x 1024 x 80 tokens, a sixth of them (weight 1 of 6) textbooks
    total, per_task, _ = prepare_all.read_budget(os.path.join(ROOT, "config", "finetune_nanophi.py"))
    assert total == 200 * 4 * 1024 * 80 and per_task["textbook"] == total / 6
    hubs = [s.hub for s in records.load_prepare("textbook").SCHEMAS if s.hub]
    plan, need, short = prepare_all.plan_caps("textbook", hubs, per_task["textbook"], 8192, 0.05, 1.3)
    supplied = sum(tokens for _, tokens, _ in plan.values())
    assert short == 0 and need <= supplied * 1.01 and supplied < 1.2 * per_task["textbook"]   # enough, not ten times more
    assert sum(docs for docs, _, _ in plan.values()) < 20000          # not the datasets' 1.1M documents
    # a tiny run against a mirror: the cap is what is read, and the plan is printed before reading
    (tmp_path / "tiny.py").write_text("max_iters = 2\nbatch_size = 2\nblock_size = 64\neval_iters = 1\ntasks = {'math': 1.0}\n")
    m = tmp_path / "hub"
    put(m, "meta-math/MetaMathQA", "MetaMathQA-395K.json",
        json_array([{"query": f"What is {i} + 1?", "response": f"The answer is: {i + 1}"} for i in range(1000)]))
    metas, problems = prepare_all.main([f"--budget={tmp_path / 'tiny.py'}", "--source=hub", "--tasks=['math']",
                                        f"--hub_root={m}", f"--out_dir={tmp_path / 'out'}", "--progress=False",
                                        "--skip_unavailable=True", "--num_generated=50"])
    out = capsys.readouterr().out
    cap = math.ceil(max(2 * 2 * 64 / 0.95, 1 * 2 * 64 / 0.05) / 260 * 1.3)
    assert f"| math | meta-math/MetaMathQA | {cap:,} |" in out
    assert out.index("per-source caps") < out.index("| math | meta-math/MetaMathQA (")   # plan before the summary
    assert not problems and metas[0]["records_read"]["meta-math/MetaMathQA"] == cap
