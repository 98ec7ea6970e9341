"""
Synthetic textbooks and exercises, as phi-1 and Cosmopedia made them: diversity comes from crossing
committed seed lists (topics x audiences x styles, topics x audiences x exercise kinds), not from
sampling temperature. The replies are kept in an append-only JSONL file (nanophi/llm.py), which is
then a source for data/textbook/prepare.py (the "text" field) or data/code/prepare.py (the
"synthetic-exercise" schema: the function's signature and docstring are the prompt, its body the
trained solution), through the same dedup, decontamination, quality filter and tokenization.
"""
import itertools
import json
import os
import random
import re

from nanophi.records import DataError
from nanophi.llm import request_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "data", "synth", "seeds.json")
KINDS = ("textbook", "exercise")

TEXTBOOK_PROMPT = (
    "Write a section of a textbook about {topic} for {audience}. Write it as {style}. "
    "Explain the ideas in order, show short Python examples where they help, and end with a summary. "
    "Write only the section, in plain text, starting with its title.")
EXERCISE_PROMPT = (
    "Write one Python exercise about {topic} for {audience}: {exercise_kind}. "
    "Give a single Python function with a descriptive name, a signature with type hints, and a docstring that "
    "states the task precisely with one or two examples, followed by a correct, readable solution. "
    "Reply with only the code in one ```python block.")


def load_seeds(path=SEEDS):
    try:
        with open(path, encoding="utf-8") as f:
            seeds = json.load(f)
    except OSError as e:
        raise DataError(f"seeds={path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"seeds={path}:{e.lineno}: not valid JSON ({e.msg})") from None
    for k in ("topics", "audiences", "styles", "exercise_kinds"):
        v = seeds.get(k)
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
            raise DataError(f"seeds={path}: '{k}' must be a non-empty list of strings")
    return seeds


def combinations(kind, seeds, seed=1337):
    """Every seed combination for a kind, in a seeded shuffled order (so --max_docs=50 spans the lists)."""
    if kind not in KINDS:
        raise DataError(f"kind={kind!r}: use one of {', '.join(KINDS)}")
    last = "styles" if kind == "textbook" else "exercise_kinds"
    names = ("topic", "audience", "style" if kind == "textbook" else "exercise_kind")
    combos = [dict(zip(names, c)) for c in itertools.product(seeds["topics"], seeds["audiences"], seeds[last])]
    random.Random(seed).shuffle(combos)
    return combos


def build_requests(kind, seeds, model, max_docs, max_tokens, temperature, seed=1337):
    """[{"key", "kind", seed fields..., "messages"}]: the requests run_requests sends."""
    template = TEXTBOOK_PROMPT if kind == "textbook" else EXERCISE_PROMPT
    out = []
    for combo in combinations(kind, seeds, seed)[:max_docs or None]:
        messages = [{"role": "user", "content": template.format(**combo)}]
        key = request_key(model, messages, max_tokens=max_tokens, temperature=temperature)
        out.append({"key": key, "kind": kind, **combo, "messages": messages})
    return out


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.S)


def parse_exercise(text):
    """A reply -> {"exercise": signature + docstring, "solution": body} or None when it holds no function
    with a docstring and a body (the first fenced block if any, else the whole reply)."""
    from nanophi.offline_sources import split_function
    m = _FENCE.search(text or "")
    code = (m.group(1) if m else text or "").strip("\n")
    start = re.search(r"^(?:@.*\n)*(?:async\s+)?def\s", code, re.M)  # prose before the function is dropped
    if not start:
        return None
    parts = split_function(code[start.start():])
    if parts is None:
        return None
    return {"exercise": parts["prompt"], "solution": parts["body"]}
