"""
train.py: batches and masks, exact gradient accumulation, resume, signals, DDP (gloo, 2 processes),
LoRA, init_from, bad configs, logs. Tiny models on tiny prepared tasks built here with
datafiles.SplitWriter and textformat (the real data layout), real subprocesses for CLI/signal/DDP.
"""
import json
import os
import random
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from configurator import ConfigError
from nanophi import textformat
from conftest import ROOT
from nanophi.checkpoint import load_checkpoint, load_model
from nanophi.datafiles import SplitWriter, TaskSplit
from nanophi.tokenizer import EOT_ID, decode

TRAIN = os.path.join(ROOT, "train.py")
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--eval_iters=1",
        "--warmup_iters=1", "--learning_rate=3e-3", "--min_lr=3e-4", "--plot=False", "--compile=False",
        "--dtype=float32"]  # exact comparisons: on a CPU with AMX the dtype probe picks bf16 for auto
TASKS = "--tasks={'math': 1.0, 'textbook': 1.0, 'chat': 0.5}"


def write_task(data_dir, task, docs_by_split):
    for split, docs in docs_by_split.items():
        w = SplitWriter(os.path.join(data_dir, task), split)
        for segs in docs:
            w.add(*textformat.encode_example(segs))
        w.commit()


def make_data(data_dir, n=40, seed=0):
    """math (QA: prompt masked), textbook (all trained; some documents longer than block 32),
    chat (only bot turns trained; a long system prompt so some windows hold no target)."""
    rng = random.Random(seed)

    def math_doc():
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        return textformat.qa("math", f"What is {a} plus {b}?", str(a + b))

    def book_doc():
        a = rng.randint(0, 90)
        return textformat.textbook(f"The number {a} comes before {a + 1}. " * rng.randint(1, 8))

    def chat_doc():
        a = rng.randint(0, 9)
        system = "You are a helpful bot. " * rng.choice([1, 12])  # 12x: > 32 tokens of prompt first
        return textformat.chat([("user", f"Say {a}"), ("assistant", f"{a}"), ("user", "again"), ("assistant", f"{a} again")],
                       system=system)

    for task, fn in (("math", math_doc), ("textbook", book_doc), ("chat", chat_doc)):
        write_task(data_dir, task, {"train": [fn() for _ in range(n)], "val": [fn() for _ in range(6)]})
    return data_dir


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread (and much faster when the cores are shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("data")))


def run_main(argv):
    """train.main in this process, from a fresh copy of the script's globals."""
    return runpy.run_path(TRAIN, run_name="train_under_test")["main"](argv)


def train_args(data_dir, out_dir, *extra):
    return [f"--data_dir={data_dir}", f"--out_dir={out_dir}", TASKS, *TINY, *extra]


def read_log(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]


# ----------------------------------------------------------------------------- batches

def test_rows_follow_masks_and_document_boundaries(data_dir):
    import train
    split = TaskSplit(data_dir, "chat", "train")
    for packing in (True, False):
        d = train.SplitWindows(split, 32, packing)
        assert len(d.starts) > split.n_docs  # long documents get extra windows inside them
        for k in range(len(d.starts)):
            s = int(d.starts[k])
            x, y = d.row(k)
            assert x.shape == y.shape == (32,)
            n = min(33, len(split) - s)
            assert (x[:n - 1] == split.tokens[s:s + n - 1]).all()
            for j in range(32):
                if y[j] != -1:
                    assert y[j] == split.tokens[s + j + 1] and split.mask[s + j + 1] == 1
                    assert x[j] != EOT_ID  # nothing is predicted across an end-of-text
                    if not packing:
                        assert s + j + 1 < d.doc_end[k]  # only the window's own document
    # all windows of a split shorter than block_size: padded, no target in the padding
    d = train.SplitWindows(TaskSplit(data_dir, "math", "val"), 512, True)
    x, y = d.row(0)
    assert x.shape == (512,) and (y[len(d.s) - 1:] == -1).all() and (y != -1).any()


def test_sampler_never_returns_a_row_without_target(data_dir):
    import train
    data = {t: train.SplitWindows(TaskSplit(data_dir, t, "train"), 32, True) for t in ("chat", "math")}
    no_target = sum(not (data["chat"].row(k)[1] != -1).any() for k in range(len(data["chat"].starts)))
    assert no_target > 0  # the fixture has windows with no target (long system prompts)
    s = train.Sampler(data, {"chat": 3.0, "math": 1.0}, 32, seed=0)
    for _ in range(10):
        X, Y = s.batch(8)
        assert ((Y != -1).sum(dim=1) > 0).all()
    assert s.targets_seen["chat"] > s.targets_seen["math"] > 0  # weights 3:1
    eps = s.epochs()
    assert eps["math"] == s.targets_seen["math"] / data["math"].n_trained


# ----------------------------------------------------------------------------- exact accumulation

def test_accumulation_with_sum_reduction_equals_big_batch():
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=128, n_layer=2, n_head=2, n_embd=32))
    X = torch.randint(0, 128, (8, 16))
    Y = torch.randint(0, 128, (8, 16))
    Y[torch.rand(8, 16) < 0.6] = -1  # uneven masks: micro-batches have different target counts
    Y[0:2, :14] = -1
    _, loss = model(X, Y)
    loss.backward()
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    n = int((Y != -1).sum())
    for k in range(0, 8, 2):
        _, s = model(X[k:k + 2], Y[k:k + 2], reduction="sum")
        (s / n).backward()
    for a, p in zip(big, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_train_accumulation_4x2_equals_1x8(data_dir, tmp_path):
    outs = []
    for bs, acc in ((2, 4), (8, 1)):
        out = str(tmp_path / f"b{bs}")
        run_main(train_args(data_dir, out, f"--batch_size={bs}", f"--gradient_accumulation_steps={acc}",
                            "--max_iters=2", "--eval_interval=100", "--grad_clip=1.0"))
        outs.append(load_checkpoint(os.path.join(out, "ckpt.pt")))
        logs = [r["loss"] for r in read_log(out) if r["type"] == "train"]
        outs[-1]["losses"] = logs
    np.testing.assert_allclose(outs[0]["losses"], outs[1]["losses"], rtol=1e-5)
    for k, v in outs[0]["model"].items():
        torch.testing.assert_close(v, outs[1]["model"][k], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- resume, logs, best

def test_resume_matches_one_run_and_keeps_best(data_dir, tmp_path):
    common = ["--max_iters=4", "--lr_decay_iters=4", "--eval_interval=2", "--dropout=0.1"]
    full = str(tmp_path / "full")
    r_full = run_main(train_args(data_dir, full, *common))
    half = str(tmp_path / "half")
    run_main(train_args(data_dir, half, "--max_iters=2", "--lr_decay_iters=4", "--eval_interval=2", "--dropout=0.1"))
    r_res = run_main(train_args(data_dir, half, *common, "--init_from=resume"))
    assert r_res["iter_num"] == r_full["iter_num"] == 4
    assert r_res["loss"] == pytest.approx(r_full["loss"], rel=1e-6)
    a = load_checkpoint(os.path.join(full, "ckpt.pt"))
    b = load_checkpoint(os.path.join(half, "ckpt.pt"))
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k])
    # the log continues across the resume; best_val_loss is the lowest val seen after iter 0
    log = read_log(half)
    assert [r["iter"] for r in log if r["type"] == "train"] == list(range(4))
    vals = {r["iter"]: r["val"]["all"] for r in log if r["type"] == "eval"}
    assert sorted(vals) == [0, 2, 4]
    assert b["best_val_loss"] == pytest.approx(min(vals[2], vals[4]))
    # the log contract eval.py plots from
    for r in log:
        if r["type"] == "train":
            assert isinstance(r["iter"], int) and isinstance(r["tokens"], int)
            for key in ("loss", "lr", "ms", "tok_per_s"):
                assert isinstance(r[key], float), key
            assert set(r["epochs"]) == {"math", "textbook", "chat"}
        else:
            assert set(r["val"]) == set(r["train"]) == {"math", "textbook", "chat", "all"}
    # a resume whose evaluations are all worse keeps the stored best (nanoGPT overwrote it)
    st = load_checkpoint(os.path.join(half, "ckpt.pt"))
    st["best_val_loss"] = -1.0
    torch.save(st, os.path.join(half, "ckpt.pt"))
    r = run_main(train_args(data_dir, half, "--max_iters=5", "--lr_decay_iters=4", "--eval_interval=2",
                            "--init_from=resume"))
    assert r["best_val_loss"] == -1.0
    assert load_checkpoint(os.path.join(half, "ckpt.pt"))["best_val_loss"] == -1.0


def test_every_task_val_loss_falls_and_plots(data_dir, tmp_path):
    out = str(tmp_path / "o")
    r = run_main(train_args(data_dir, out, "--max_iters=16", "--eval_interval=16", "--plot=True",
                            "--learning_rate=1e-2", "--min_lr=1e-3"))
    first, last = r["evals"][0]["val"], r["evals"][16]["val"]
    for task in ("math", "textbook", "chat", "all"):
        assert last[task] < first[task] - 1.0, (task, first[task], last[task])
        assert os.path.isfile(os.path.join(out, f"loss_{task}.png"))
    assert os.path.isfile(os.path.join(out, "best.pt"))
    model, _ = load_model("resume", out)  # sample.py's path: best.pt
    assert model.config.block_size == 32


def test_warmup_warning_and_memory_estimate(data_dir, tmp_path, capsys):
    run_main(train_args(data_dir, str(tmp_path / "w"), "--max_iters=1", "--warmup_iters=5", "--eval_interval=100"))
    out = capsys.readouterr().out
    assert "WARNING: warmup_iters (5) >= max_iters (1)" in out
    assert "memory estimate (GiB): weights" in out
    import train
    from model import GPTConfig
    cfg = GPTConfig(block_size=1024, n_layer=24, n_head=16, n_embd=1024)
    full = train.memory_estimate(354e6, 354e6, cfg, 4, "float16", False)
    ckpt = train.memory_estimate(354e6, 354e6, cfg, 4, "float16", True)
    lora = train.memory_estimate(354e6, 2e6, cfg, 4, "float16", False)
    assert ckpt["activations"] < full["activations"] / 2
    assert lora["optimizer"] < full["optimizer"] / 100
    assert 8 * 2**30 < full["total"] < 15 * 2**30  # gpt2-medium, B4 x T1024, fp16: fits a 15 GB T4


def test_gradient_checkpointing_and_bf16_train(data_dir, tmp_path):
    losses = []
    for gc in (False, True):
        r = run_main(train_args(data_dir, str(tmp_path / f"gc{gc}"), "--max_iters=2", "--eval_interval=100",
                                f"--gradient_checkpointing={gc}"))
        losses.append(r["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    from nanophi.device import cpu_has_bf16
    if cpu_has_bf16():
        r = run_main(train_args(data_dir, str(tmp_path / "bf16"), "--max_iters=2", "--eval_interval=100",
                                "--dtype=bfloat16"))
        assert np.isfinite(r["loss"])


def test_embedding_init_scale_and_which_embedding_rows_train(data_dir, tmp_path):
    def weights(out):
        return {k: v.clone() for k, v in load_model("resume", str(out))[0].state_dict().items()}

    still = {}
    for std in (0.02, 0.25):  # learning_rate 0: the weights stay at their init
        run_main(train_args(data_dir, tmp_path / f"s{std}", "--max_iters=2", "--eval_interval=100", "--learning_rate=0",
                            "--min_lr=0", f"--embedding_init_std={std}"))
        still[std] = weights(tmp_path / f"s{std}")
    wte = "transformer.wte.weight"
    assert torch.allclose(still[0.25][wte], still[0.02][wte] * 12.5)  # the same draw, scaled
    assert all(torch.equal(v, still[0.02][k]) for k, v in still[0.25].items() if k not in (wte, "lm_head.weight"))
    start = os.path.join(tmp_path / "s0.25", "ckpt.pt")
    seen = np.zeros(len(still[0.25][wte]), dtype=bool)
    for task in ("math", "textbook", "chat"):
        seen[np.unique(np.asarray(TaskSplit(data_dir, task, "train").tokens))] = True
    after = {}
    for mode in ("all", "seen", "none"):
        run_main(train_args(data_dir, tmp_path / mode, f"--init_from={start}", "--max_iters=3", "--eval_interval=100",
                            "--weight_decay=0", f"--train_embeddings={mode}"))
        after[mode] = weights(tmp_path / mode)
        assert not torch.equal(after[mode]["transformer.h.0.attn.c_attn.weight"], still[0.25]["transformer.h.0.attn.c_attn.weight"])
    moved = {m: (after[m][wte] != still[0.25][wte]).any(1).numpy() for m in after}
    assert moved["all"][~seen].all()  # AdamW moves every row, never-seen tokens too
    assert (moved["seen"] == seen).all()  # only the rows of tokens in the data
    assert not moved["none"].any()


# ----------------------------------------------------------------------------- init_from, LoRA

def test_init_from_hf_dir_with_block_size_crop_and_grow(data_dir, tmp_path, tiny_hf_dir):
    for bs in (32, 160):  # the checkpoint has 128 positions
        out = str(tmp_path / f"hf{bs}")
        run_main(train_args(data_dir, out, f"--init_from={tiny_hf_dir}", f"--block_size={bs}", "--max_iters=1",
                            "--eval_interval=100"))
        ck = load_checkpoint(os.path.join(out, "ckpt.pt"))
        assert ck["model_args"]["block_size"] == bs and ck["model_args"]["n_embd"] == 64
        assert ck["model"]["transformer.wpe.weight"].shape == (bs, 64)
        assert not any(k.startswith(("_orig_mod.", "module.")) for k in ck["model"])


def test_lora_adapter_small_mergeable_and_loadable(data_dir, tmp_path, tiny_hf_dir):
    out = str(tmp_path / "lora")
    run_main(train_args(data_dir, out, f"--init_from={tiny_hf_dir}", "--lora_rank=4", "--lora_alpha=8",
                        "--lora_dropout=0.0", "--max_iters=4", "--eval_interval=2", "--learning_rate=1e-2"))
    adir = os.path.join(out, "lora")
    size = sum(os.path.getsize(os.path.join(adir, f)) for f in os.listdir(adir))
    base_size = sum(os.path.getsize(os.path.join(tiny_hf_dir, f)) for f in os.listdir(tiny_hf_dir))
    assert size < base_size / 10
    ck = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert "model" not in ck and ck["lora"] and ck["lora_base"] == os.path.relpath(tiny_hf_dir, out)
    merged, _ = load_model(adir)
    from_ckpt, _ = load_model("resume", out, which="latest")
    base, _ = load_model(tiny_hf_dir)
    x = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        a, b, c = merged(x)[0], from_ckpt(x)[0], base(x)[0]
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4  # the adapter changed the model
    assert type(merged).__name__ == "GPT"
    # resume continues the adapter with its optimizer state (its shape is the base model's: no shape settings)
    args = [a for a in train_args(data_dir, out, "--init_from=resume", "--max_iters=6", "--eval_interval=2")
            if not a.startswith(("--n_layer", "--n_head", "--n_embd"))]
    r = run_main(args)
    assert r["iter_num"] == 6


def test_lora_adapter_moves_with_its_base(data_dir, tmp_path, tiny_hf_dir):
    """The adapter stores its base relative to itself: moved together they load; a base left
    behind is an error naming the adapter and the base (it used to blame init_from)."""
    import shutil
    work = tmp_path / "work"
    shutil.copytree(tiny_hf_dir, work / "base")
    out = str(work / "run")
    run_main(train_args(data_dir, out, f"--init_from={work / 'base'}", "--lora_rank=2", "--max_iters=1",
                        "--eval_interval=100"))
    want, _ = load_model(os.path.join(out, "lora"))
    shutil.move(str(work), str(tmp_path / "moved"))
    moved = tmp_path / "moved"
    x = torch.randint(0, 50257, (1, 8))
    for init in (str(moved / "run" / "lora"), str(moved / "run" / "ckpt.pt")):
        got, _ = load_model(init)
        with torch.no_grad():
            torch.testing.assert_close(got(x)[0], want(x)[0])
    shutil.rmtree(moved / "base")
    with pytest.raises(FileNotFoundError, match=r"run/lora is a LoRA adapter whose base model .*base' is not there"):
        load_model(str(moved / "run" / "lora"))


def test_lora_adapter_refuses_a_base_that_changed(data_dir, tmp_path):
    """The adapter records its base's weights hash: a base trained further (here: other weights
    written to the same folder) is refused by name, not merged into other outputs without a word."""
    from configurator import ConfigError
    from conftest import make_hf_dir
    base = make_hf_dir(str(tmp_path / "base"))
    out = str(tmp_path / "run")
    run_main(train_args(data_dir, out, f"--init_from={base}", "--lora_rank=2", "--max_iters=1", "--eval_interval=100"))
    meta = json.load(open(os.path.join(out, "lora", "nanophi_adapter.json")))
    assert len(meta["base_sha256"]) == 64 and load_checkpoint(os.path.join(out, "ckpt.pt"))["lora_base_sha256"]
    load_model(os.path.join(out, "lora"))  # the untouched base loads
    make_hf_dir(base, seed=1)  # same shape, other weights
    for init in (os.path.join(out, "lora"), os.path.join(out, "ckpt.pt"), os.path.join(out, "best.pt")):
        with pytest.raises(ValueError, match=r"is a LoRA adapter trained on .*base' with weights sha256 [0-9a-f]{12}"
                                             r"\.\.\., but .* now holds other weights"):
            load_model(init)
    args = [a for a in train_args(data_dir, out, "--init_from=resume", "--max_iters=2")
            if not a.startswith(("--n_layer", "--n_head", "--n_embd"))]
    with pytest.raises(ConfigError, match="now holds other weights"):
        run_main(args)


@pytest.mark.slow
def test_diverged_loss_is_one_line_without_a_dtype_hint_in_fp32(data_dir, tmp_path):
    """A learning rate that blows the weights up: the run stops with one `error:` line (exit 1) that
    gives the fix that applies (an fp32 run is not told to use float32) and keeps the last ckpt.pt."""
    out = tmp_path / "nan"
    p = run_cli(*train_args(data_dir, str(out), "--learning_rate=1e30", "--min_lr=1e29", "--dtype=float32",
                            "--max_iters=6", "--eval_interval=1", "--always_save_checkpoint=True"), cwd=ROOT)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert re.fullmatch(r"error: iter \d+: loss is nan; lower learning_rate; ckpt.pt from iter \d+ is kept",
                        lines[-1]), lines[-1]
    ck = load_checkpoint(str(out / "ckpt.pt"))
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def publish_set(data_dir, task, word, n):
    """A prepared set published as another process's data prep does it: a staging folder, one switch
    of .current, then its cleanup removes the old set's folder."""
    from nanophi.datafiles import new_staging, publish
    task_dir = os.path.join(data_dir, task)
    old = os.path.realpath(os.path.join(task_dir, ".current")) if os.path.islink(os.path.join(task_dir, ".current")) else None
    folder = new_staging(task_dir)
    for split, k in (("train", n), ("val", 3)):
        w = SplitWriter(folder, split)
        for _ in range(k):
            w.add(*textformat.encode_example(textformat.textbook(f"{word} " * 40)))
        w.commit()
    publish(task_dir, folder)
    if old:  # (publish's own cleanup spares another live process's folders)
        shutil.rmtree(old, ignore_errors=True)


@pytest.mark.parametrize("when", ["after the folder is read", "after train is opened"])
def test_train_and_val_come_from_one_prepared_set_while_it_is_republished(tmp_path, when):
    """A re-preparation publishing (and removing the old set) while a run opens the task: train and
    val are never from two sets, and the removed folder is not a crash: the task is opened again."""
    data_dir = str(tmp_path / "data")
    publish_set(data_dir, "textbook", "old", 8)
    g = runpy.run_path(TRAIN, run_name="train_under_test")
    opened, republished = [], []

    def republish():
        if not republished:
            republished.append(publish_set(data_dir, "textbook", "new", 9))

    def racing_split(data_dir_, task, split, files=None):
        if when == "after the folder is read":
            republish()
        ts = TaskSplit(data_dir_, task, split, files)
        opened.append(split)
        if when == "after train is opened":
            republish()
        return ts

    g["open_tasks"].__globals__["TaskSplit"] = racing_split  # run_path returned a copy of the globals
    data, _ = g["open_tasks"](data_dir, {"textbook": 1.0}, 32)
    words = {s: set(re.findall(r"\b(old|new)\b", decode(w.s.tokens[:].tolist()))) for s, w in data["textbook"].items()}
    assert words["train"] == words["val"] == {"new"}, words
    assert data["textbook"]["train"].s.n_docs == 9


# ----------------------------------------------------------------------------- bad configs

@pytest.mark.parametrize("extra, message", [
    (["--tasks={'nosuchtask': 1.0}"], "unknown task 'nosuchtask'"),
    (["--tasks={'math': 0.0, 'chat': -0.0}"], "every mixture weight is zero"),
    (["--tasks={'math': -1.0}"], "negative"),
    (["--tasks={'logic': 1.0}"], "missing dataset"),
    (["--block_size=100000"], "block_size 100000 is larger than task"),
    (["--batch_size=0"], "batch_size must be >= 1, got 0"),
    (["--lora_rank=4"], "lora_rank > 0 adapts a pretrained model"),
    (["--max_itres=3"], "did you mean max_iters"),
    (["--max_iters=-1"], "argument '--max_iters=-1': max_iters must be >= 0, got -1"),
    (["--warmup_iters=-5"], "warmup_iters must be >= 0, got -5"),
    (["--compile=maybe"], "compile must be one of None, True, False, got 'maybe'"),
    (["--n_head=3"], "n_head=3 does not divide n_embd=32"),
    (["--dtype=float64"], "dtype must be one of 'auto', 'float32', 'bfloat16', 'float16', got 'float64'"),
    (["--device=tpu"], "device must be auto, cpu, mps, cuda or cuda:N, got 'tpu'"),
    (["--dropout=1.5"], "dropout must be between 0.0 and 1.0"),
    (["--init_from=resume"], "init_from=resume: no checkpoint at"),
    (["--init_from=nosuchmodel"], "init_from='nosuchmodel'"),
])
def test_bad_config_stops_before_compute(data_dir, tmp_path, extra, message):
    from configurator import ConfigError
    with pytest.raises(ConfigError) as e:
        run_main(train_args(data_dir, str(tmp_path / "bad"), *extra))
    assert message in str(e.value)
    assert not os.path.exists(os.path.join(tmp_path, "bad", "log.jsonl"))


def run_cli(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True, cwd=str(cwd), timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def one_line_error(p):
    """The stderr of a run stopped by bad settings: exit 2, one 'config error' line, no traceback."""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("config error: "), p.stderr
    return lines[0]


@pytest.mark.slow
def test_cli_bad_config_exit_code(data_dir, tmp_path):
    err = one_line_error(run_cli(f"--data_dir={data_dir}", "--tasks={'math': 0}", cwd=tmp_path))
    assert "every mixture weight is zero" in err
    # config files that raise or exit are errors naming the file (sys.exit(0) used to end the run with 0)
    (tmp_path / "raises.py").write_text("batch_size = 4\nimport json\njson.loads('{')\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    err = one_line_error(run_cli("raises.py", cwd=tmp_path))
    assert "config file raises.py, line 3: JSONDecodeError" in err
    err = one_line_error(run_cli("exits.py", cwd=tmp_path))
    assert "config file exits.py: it calls sys.exit(0)" in err
    err = one_line_error(run_cli(f"--data_dir={data_dir}", "--dtype=float64", cwd=tmp_path))
    assert "dtype must be one of" in err
    assert not os.path.exists(tmp_path / "out")  # stopped before anything was written


def test_help_prints_what_each_setting_does(capsys):
    with pytest.raises(SystemExit) as e:
        run_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--max_iters=1000  # optimizer steps" in out
    assert "--n_head=4  # attention heads (must divide n_embd)" in out
    assert "--epochs=0.0  # > 0: set max_iters to this many passes" in out


def test_explicit_max_iters_wins_over_a_configs_epochs(data_dir, tmp_path, capsys):
    cfg = tmp_path / "epochs.py"
    cfg.write_text("epochs = 50.0\neval_interval = 100\n")
    r = run_main([str(cfg), *train_args(data_dir, str(tmp_path / "e"), "--max_iters=2")])
    assert r["iter_num"] == 2
    assert "max_iters=2 (argument '--max_iters=2') wins over epochs=50.0 (config file" in capsys.readouterr().out
    both = tmp_path / "both.py"
    both.write_text("epochs = 50.0\nmax_iters = 3\n")
    from configurator import ConfigError
    with pytest.raises(ConfigError, match="sets both epochs .50.0. and max_iters .3.; set one of them"):
        run_main(train_args(data_dir, str(tmp_path / "b"), str(both)))


def test_growing_the_context_is_announced(data_dir, tmp_path, tiny_hf_dir, capsys):
    run_main(train_args(data_dir, str(tmp_path / "g"), f"--init_from={tiny_hf_dir}", "--block_size=160",
                        "--max_iters=0", "--eval_only=True"))
    assert "context grown from 128 to block_size 160 positions" in capsys.readouterr().out


def test_resume_refuses_another_shape_or_lora_on_a_full_finetune(data_dir, tmp_path):
    from configurator import ConfigError
    out = str(tmp_path / "r")
    run_main(train_args(data_dir, out, "--max_iters=1", "--eval_interval=100"))
    with pytest.raises(ConfigError, match=r"argument '--n_layer=3': n_layer=3, but .*ckpt.pt holds a model with n_layer=2"):
        run_main(train_args(data_dir, out, "--init_from=resume", "--n_layer=3"))
    with pytest.raises(ConfigError, match=r"n_embd=48, but .*n_embd=32; a resumed run keeps its shape"):
        run_main(train_args(data_dir, out, "--init_from=resume", "--n_embd=48", "--n_head=2"))
    with pytest.raises(ConfigError, match=r"lora_rank=4 .*is a full finetune, not a LoRA run; .*--init_from=.*ckpt.pt --lora_rank=4"):
        run_main(train_args(data_dir, out, "--init_from=resume", "--lora_rank=4"))
    r = run_main(train_args(data_dir, out, "--init_from=resume", "--max_iters=2", "--eval_interval=100"))
    assert r["iter_num"] == 2  # the same shape resumes


@pytest.mark.slow
def test_kill_between_ckpt_and_best_is_repaired_on_resume(data_dir, tmp_path):
    """kill -9 after ckpt.pt (which says it is the best) is written but before best.pt: the resumed
    run finds best.pt older than ckpt.pt's best state and rewrites it (it stayed stale before)."""
    out = str(tmp_path / "k")
    args = train_args(data_dir, out, "--max_iters=4", "--eval_interval=2", "--learning_rate=1e-2")
    code = (
        "import os, signal, sys, runpy\n"
        "from nanophi import checkpoint\n"
        "real = checkpoint.save_checkpoint\n"
        "def save(path, state):\n"
        "    if path.endswith('best.pt') and state['iter_num'] == 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)  # ckpt.pt is written, best.pt not yet\n"
        "    real(path, state)\n"
        "checkpoint.save_checkpoint = save\n"
        f"sys.argv = {[TRAIN] + args!r}\n"
        f"runpy.run_path({TRAIN!r}, run_name='__main__')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == -9, p.stdout[-2000:] + p.stderr[-2000:]
    ck = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ck["iter_num"] == 4 and ck["best_iter"] == 4  # improved at 4: the kill came before best.pt
    assert load_checkpoint(os.path.join(out, "best.pt"))["iter_num"] == 2
    run_main(train_args(data_dir, out, "--max_iters=4", "--eval_interval=2", "--init_from=resume"))
    best = load_checkpoint(os.path.join(out, "best.pt"))
    assert best["iter_num"] == 4 and best["best_val_loss"] == ck["best_val_loss"]
    for k, v in ck["model"].items():
        assert torch.equal(v, best["model"][k])
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def in_mount_namespace(setup, command):
    """Run command (a list) after shell setup lines in a private mount namespace (root, unshare);
    skips where the kernel or the user may not."""
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no private mount namespace here (unshare --mount refused)")
    import shlex
    script = f"set -e; {setup}; exec {' '.join(shlex.quote(c) for c in command)}"
    return subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_disk_full_and_read_only_out_dir_are_clear_errors(data_dir, tmp_path):
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    # a 1 MiB file system: the first checkpoint (about 20 MB) cannot fit: refused before the first step
    p = in_mount_namespace(f"mount -t tmpfs -o size=1m tmpfs {full}",
                           [sys.executable, TRAIN, *train_args(data_dir, str(full), "--max_iters=2", "--eval_interval=2")])
    assert "MB free, but a ckpt.pt and a best.pt need" in one_line_error(p)
    assert not os.path.exists(full / "log.jsonl")
    p = in_mount_namespace(f"mount --bind {ro} {ro}; mount -o remount,ro,bind {ro}",
                           [sys.executable, TRAIN, *train_args(data_dir, str(ro), "--max_iters=2")])
    assert f"out_dir {str(ro)!r} is not writable (Read-only file system)" in one_line_error(p)


def test_configs_parse():
    import train
    from configurator import config_keys, configure
    for name in sorted(os.listdir(os.path.join(ROOT, "config"))):
        if name.endswith(".py"):
            g = config_keys(vars(train))
            configure(g, [os.path.join(ROOT, "config", name)])
            assert g["batch_size"] >= 1


# ----------------------------------------------------------------------------- subprocesses

@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint(data_dir, tmp_path):
    out = str(tmp_path / "sig")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, TRAIN, *train_args(data_dir, out, "--max_iters=100000",
                                                             "--eval_interval=100000")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log = os.path.join(out, "log.jsonl")
    deadline = time.time() + 60
    while time.time() < deadline and not (os.path.exists(log) and len(open(log).readlines()) >= 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    output = p.communicate(timeout=60)[0]
    assert p.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM: saved" in output
    ck = load_checkpoint(os.path.join(out, "ckpt.pt"))
    n = ck["iter_num"]
    assert n >= 2 and not [f for f in os.listdir(out) if ".tmp" in f]
    r = run_main(train_args(data_dir, out, "--init_from=resume", f"--max_iters={n + 1}", "--eval_interval=100000"))
    assert r["iter_num"] == n + 1


@pytest.mark.slow
def test_ddp_gloo_two_processes_match_one(data_dir, tmp_path):
    args = ["--max_iters=2", "--eval_interval=2", "--gradient_accumulation_steps=2", "--batch_size=2"]
    single = run_main(train_args(data_dir, str(tmp_path / "one"), *args))
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        TRAIN, *train_args(data_dir, out, *args)], capture_output=True, text=True, env=env,
                       timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    log = read_log(out)
    evals = {r["iter"]: r for r in log if r["type"] == "eval"}
    for it in (0, 2):
        for task, v in single["evals"][it]["val"].items():
            assert evals[it]["val"][task] == pytest.approx(v, rel=1e-4), (it, task)
    train_losses = [r["loss"] for r in log if r["type"] == "train"]
    assert len(train_losses) == 2  # only rank 0 logs
    assert train_losses[-1] == pytest.approx(single["loss"], rel=1e-4)


# ----------------------------------------------------------------------------- out_dir: one run, its data, its log

def test_second_live_run_refused_and_stale_lock_taken_over(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live pid
    try:
        (out / "train.lock").write_text(f"{other.pid}\n")
        with pytest.raises(ConfigError, match=f"in use by another training run \\(pid {other.pid}"):
            run_main(train_args(data_dir, str(out), "--max_iters=1"))
        assert (out / "train.lock").read_text() == f"{other.pid}\n"  # the live run's lock stays
    finally:
        other.kill()
        other.wait()
    run_main(train_args(data_dir, str(out), "--max_iters=1"))  # its pid is dead now: taken over
    assert f"taking over the lock of pid {other.pid}" in capsys.readouterr().out
    assert not (out / "train.lock").exists()  # released at the end


def test_new_run_refuses_a_trained_out_dir_unless_overwrite(data_dir, tmp_path):
    out = str(tmp_path / "out")
    run_main(train_args(data_dir, out, "--max_iters=2"))
    with pytest.raises(ConfigError, match="already holds a trained run.*--overwrite=True"):
        run_main(train_args(data_dir, out, "--max_iters=2"))
    first_log = open(os.path.join(out, "log.jsonl")).read()
    run_main(train_args(data_dir, out, "--max_iters=3", "--overwrite=True"))
    assert open(os.path.join(out, "log.1.jsonl")).read() == first_log  # the earlier run's log kept apart
    assert [r["iter"] for r in read_log(out) if r["type"] == "train"] == [0, 1, 2]  # a new log


def test_resume_refuses_re_prepared_data_unless_accepted(tmp_path):
    data = make_data(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    run_main(train_args(data, out, "--max_iters=2"))
    make_data(data, seed=1)  # prepared again: other documents (math keeps its offsets: only meta.json would tell)
    with pytest.raises(ConfigError, match="differ from what .*re-prepared since the checkpoint: chat, textbook"):
        run_main(train_args(data, out, "--max_iters=3", "--init_from=resume"))
    r = run_main(train_args(data, out, "--max_iters=3", "--init_from=resume", "--data_changed_ok=True"))
    assert r["iter_num"] == 3


def test_resumed_log_has_each_iteration_once(data_dir, tmp_path):
    """An attempt that ran past its last checkpoint (killed later): its extra entries are dropped."""
    out = str(tmp_path / "out")
    common = ["--eval_interval=2", "--lr_decay_iters=6"]
    run_main(train_args(data_dir, out, "--max_iters=2", *common))
    saved = load_checkpoint(os.path.join(out, "ckpt.pt"))
    run_main(train_args(data_dir, out, "--max_iters=5", *common, "--init_from=resume"))
    torch.save(saved, os.path.join(out, "ckpt.pt"))  # as if killed after logging iters 2-4, before saving them
    run_main(train_args(data_dir, out, "--max_iters=6", *common, "--init_from=resume"))
    log = read_log(out)
    assert [r["iter"] for r in log if r["type"] == "train"] == list(range(6))
    assert [r["iter"] for r in log if r["type"] == "eval"] == [0, 2, 4, 6]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable CUDA")
def test_cuda_on_a_cpu_only_torch_is_a_config_error(data_dir, tmp_path):
    err = one_line_error(run_cli(f"--data_dir={data_dir}", "--device=cuda", cwd=tmp_path))
    assert "device='cuda': " in err and "use device=cpu or auto" in err
    assert not os.path.exists(tmp_path / "out")


# ----------------------------------------------------------------------------- saves that fit Google Drive

def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.slow
def test_killed_saves_temp_files_are_gone_after_the_next_start(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    run_main(train_args(data_dir, str(out), "--max_iters=2"))
    gone = dead_pid()
    (out / f"ckpt.pt.tmp-{gone}").write_bytes(b"half a checkpoint")  # what a kill -9 mid-save leaves
    (out / f"lora.tmp-{gone}").mkdir()
    (out / f"lora.tmp-{gone}" / "adapter_model.safetensors").write_bytes(b"x")
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = out / f"best.pt.tmp-{writer.pid}"  # a live process's temp file is not ours to remove
    live.write_bytes(b"in progress")
    try:
        run_main(train_args(data_dir, str(out), "--max_iters=3", "--init_from=resume"))
    finally:
        writer.kill()
        writer.wait()
    assert not (out / f"ckpt.pt.tmp-{gone}").exists() and not (out / f"lora.tmp-{gone}").exists()
    assert live.exists()
    assert f"ckpt.pt.tmp-{gone}: left by a save that was killed (pid {gone} is gone)" in capsys.readouterr().out


def test_rehearse_finetune_nanophi_cadence_and_count_bytes(data_dir, tmp_path, capsys):
    """config/finetune_nanophi.py's save settings on tiny shapes: best.pt (weights only) when val
    improves, ckpt.pt on the clock and at the end; every byte written to out_dir is counted."""
    out = tmp_path / "out"
    cfg = os.path.join(ROOT, "config", "finetune_nanophi.py")
    tiny = [a for a in train_args(data_dir, str(out)) if not a.startswith("--warmup_iters")]
    wchar = lambda: int(next(line.split()[1] for line in open("/proc/self/io") if line.startswith("wchar")))
    before = wchar()
    run_main([cfg, *tiny, "--init_from=scratch", "--gradient_accumulation_steps=1", "--max_iters=20",
              "--lr_decay_iters=20", "--dtype=float32", "--save_interval_min=0.0001"])  # a 6 ms clock: every step
    written = wchar() - before
    printed = capsys.readouterr().out
    n_best = printed.count(" and best.pt") + printed.count(f"saved {out}/best.pt")
    n_ckpt = printed.count(f"saved {out}/ckpt.pt at iter")
    ckpt_bytes, best_bytes = os.path.getsize(out / "ckpt.pt"), os.path.getsize(out / "best.pt")
    assert n_ckpt == 20 and 1 <= n_best <= 4  # evals at 5, 10, 15, 20 (not 0): best only when val improved
    assert best_bytes < ckpt_bytes / 2.5  # no optimizer, no RNG: a third of ckpt.pt or less
    saves = n_ckpt * ckpt_bytes + n_best * best_bytes
    assert saves <= written <= saves * 1.05 + 2_000_000  # the rest: log.jsonl and the console
    # the shapes-only estimate the start-up message and docs use matches the files on disk
    from model import GPT, GPTConfig
    from nanophi.checkpoint import save_sizes
    ck = load_checkpoint(out / "ckpt.pt")
    with torch.device("meta"):
        est = save_sizes(GPT(GPTConfig(**ck["model_args"])), "float32")
    assert est["resumable"] <= ckpt_bytes <= est["resumable"] * 1.02 + 200_000
    assert est["best"] <= best_bytes <= est["best"] * 1.02 + 100_000
    assert f"saves: ckpt.pt {est['resumable'] / 1e6:,.1f} MB" in printed


def test_gpt2_medium_save_sizes_from_a_meta_model():
    """The figures docs/training.md quotes, from shapes alone (nothing allocated)."""
    from model import GPT, GPTConfig
    from nanophi.checkpoint import save_sizes
    with torch.device("meta"):
        medium = GPT(GPTConfig(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257))
    assert next(medium.parameters()).is_meta
    fp16 = save_sizes(medium, "float16")
    assert 0.70e9 < fp16["best"] < 0.72e9  # 354.8M weights x 2 bytes
    assert 4.2e9 < fp16["resumable"] < 4.3e9  # fp32 weights + AdamW's two moments: 12 bytes each
    # 200 iterations, 4 h on a T4: ckpt.pt every 25 min (+ the end) and at most one best.pt per evaluation (40)
    per_run = (4 * 60 // 25 + 1) * fp16["resumable"] + 40 * fp16["best"]
    assert 70e9 < per_run < 75e9


@pytest.mark.slow
def test_hub_name_without_network_is_one_line_and_leaves_no_out_dir(data_dir, tmp_path):
    # a closed port on loopback stands in for "no internet": transformers alone retries ~1 min, then a traceback
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0")
    out = tmp_path / "out"
    for cmd in ([TRAIN, *train_args(data_dir, str(out), "--init_from=gpt2-medium")],
                [os.path.join(ROOT, "sample.py"), "--init_from=gpt2", "--start=hi"]):
        t0 = time.time()
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("Overriding:")]
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "not in the Hugging Face cache and 127.0.0.1 cannot be reached" in lines[0]
        assert time.time() - t0 < 60
    assert not out.exists()
