"""
The seed project's showcase prompts as families of generated items, a training side and a held-out
side that share no final query, scored greedily on base and finetuned models (pipeline.py prints it).

    (a) doubling   [Math] 1+1=2 2+2=4 3+3=6 4+4=8 5+5=10 6+6=          -> 12
    (b) running +k [Math] 1+1=2 1+2=3 1+3=4 1+4=5 1+5=6 1+6=          -> 7
    (c) chain      [Logic] If a beaver makes a wooden dam, and the dam is on a river,
                   the beaver's dam must be on a                       -> river

Held out: (a) the final n of 'n+n=' and (b) the final pair 'a+b=' come from sets training never ends
a chain with, and no training chain starts with a held-out prompt (the same sums do occur inside
longer training chains: the table of sums is small, the prompt is what is new); (c) every noun comes
from a list training never uses. Chains are plain text (every
token trained, as textformat.plain renders few-shot chains), so training also predicts the copies
inside the premise, which is what (c) asks of a new noun. The seed wrote (c) with plurals ("dams are
on rivers ... on a" -> river); GPT-2's BPE makes " rivers" one token unrelated to " river", so a never
seen noun's singular cannot be read off its plural: the family states the nouns in the singular.

Each family's items are {"family", "text", "query"} (training) or {"family", "prompt", "answer",
"query"} (held out); "query" is the final equation's left side ('7+7=') or the three nouns.
"""
import math
import random
import re

from nanophi import textformat

N_SHOTS = 5  # the seed's showcase prompts: five worked equations, then the query

# (a): the final n of a held-out 'n+n=' (one in four); (b): the final (a, b) of a held-out 'a+b=' (one pair in seven).
# Training chains of either family never end on a held-out query (they may pass through one)
HELD_DOUBLE = frozenset(n for n in range(1, 100) if n % 3 == 0)
HELD_PAIR = frozenset((a, b) for a in range(1, 100) for b in range(1, 100) if (3 * a + b) % 7 == 4)


def held_query(a, b):
    """Is 'a+b=' a held-out final query (of either family: a running chain can end on 'n+n=')?"""
    return (a == b and a in HELD_DOUBLE) or (a, b) in HELD_PAIR

# (c): consonant-initial nouns (the prompt ends in 'a', never 'an', so the article gives nothing away),
# each one GPT-2 token, so the answer is a copy of the token at a fixed distance before the end
TRAIN_NOUNS = ("bug", "dam", "river", "bird", "nest", "tree", "spider", "web", "wall", "hill", "field", "farm",
               "den", "lake", "fox", "hole", "wood", "barn", "frog", "pond", "rock", "crab", "shell", "beach", "mole",
               "tunnel", "garden", "snail", "leaf", "stem", "worm", "road", "bridge", "car", "tower", "castle", "lamp",
               "desk", "cup", "table", "chair", "boat", "dock", "harbor", "cat", "basket", "door", "mouse", "wagon",
               "stone", "cliff", "sheep", "fence", "park", "goat", "tent", "camp", "horse", "cart", "track")
# held out: never in any training item (nor in gen_logic's questions); each one GPT-2 token, and each a
# word the base read hundreds of times in pretraining (Python's docs and code). GPT-2 knows every noun;
# the stand-in base knows only what it read, and a word it never read has the embedding every unseen
# token collapses to, which no head can tell apart from another unseen word (measured: 'robot', 'tiger',
# 'cave' ... had 0 occurrences in the base's 4.3M tokens). "New" here means new to the chain task.
HELD_NOUNS = ("file", "name", "module", "string", "function", "list", "line", "path", "code", "number",
              "message", "result", "context", "format", "mode", "command", "text", "tuple", "parameter",
              "header", "socket", "process", "parser", "directory", "test", "source", "server", "size",
              "filename", "character", "sequence", "dictionary", "thread", "system", "turtle", "package",
              "handler", "host", "loop", "level", "buffer", "queue")


def training_nouns():
    """TRAIN_NOUNS and every other single-token lowercase consonant-initial word of GPT-2's vocabulary
    (thousands, most not nouns, minus the held-out ones): with that many the answer cannot be
    memorised, only copied from the prompt, which is what a new noun needs."""
    global _POOL
    if _POOL is None:
        from nanophi.tokenizer import get_tokenizer
        enc, held = get_tokenizer(), set(HELD_NOUNS)
        words = (enc.decode_single_token_bytes(i).decode("utf-8", "replace") for i in range(enc.n_vocab - 1))
        vocab = sorted({w[1:] for w in words if len(w) in range(4, 10) and w[0] == " " and w[1:].isascii()
                        and w[1:].isalpha() and w[1:].islower() and w[1] not in "aeiou"} - held - set(TRAIN_NOUNS))
        _POOL = TRAIN_NOUNS + tuple(vocab)
    return _POOL


_POOL = None
_VERBS = ("makes", "builds", "keeps", "finds", "owns", "paints")
_ADJECTIVES = ("wooden", "small", "old", "red", "tall", "round", "new", "heavy")
_PLACES = ("on", "in", "near", "under", "by", "behind")


def doubling(rng, held_out):
    """(a) n+n=2n for consecutive n; held out: chains of N_SHOTS ending on an n of HELD_DOUBLE.
    Training chains also step n by 2 or 3 (half of them), so the answer must be read off n, not only
    counted on from the previous answer; and they start up to 100: a chain is fixed by (start, step,
    shots), exact dedup keeps one copy of each, and consecutive chains from 1-60 alone left 160
    distinct ones, 1% of math's documents (now 1,257 of 20,000 drawn)."""
    while True:
        shots = N_SHOTS if held_out else rng.randint(3, 10)
        step = 1 if held_out or rng.random() < 0.5 else rng.choice((2, 3))
        start = rng.randint(1, 60 if held_out else 100)
        last = start + step * shots
        # training: never ends on a held-out query, and never starts with a held-out prompt's equations
        if (last in HELD_DOUBLE if held_out else not held_query(last, last) and not (
                step == 1 and shots > N_SHOTS and held_query(start + N_SHOTS, start + N_SHOTS))):
            break
    eqs = [f"{n}+{n}={2 * n}" for n in range(start, last, step)]
    return _chain_item("doubling", eqs, f"{last}+{last}=", 2 * last, held_out)


def running(rng, held_out):
    """(b) a+b for a fixed a and consecutive b; held out: chains ending on a held-out pair."""
    while True:
        shots = N_SHOTS if held_out else rng.randint(3, 8)
        a, start = rng.randint(1, 20), rng.randint(1, 15)
        last = start + shots
        if ((a, last) in HELD_PAIR if held_out else
                not held_query(a, last) and not (shots > N_SHOTS and held_query(a, start + N_SHOTS))):
            break
    eqs = [f"{a}+{b}={a + b}" for b in range(start, last)]
    return _chain_item("running", eqs, f"{a}+{last}=", a + last, held_out)


def _chain_item(family, eqs, query, answer, held_out):
    prompt = " ".join(eqs + [query])
    if held_out:
        return {"family": family, "prompt": prompt, "answer": str(answer), "query": query}
    return {"family": family, "text": f"{prompt}{answer}", "query": query}


def chain(rng, held_out):
    """(c) a two-step chain whose answer, the third noun, is in the prompt; held out: new nouns."""
    pool = HELD_NOUNS if held_out else TRAIN_NOUNS if rng.random() < 0.5 else training_nouns()
    maker, thing, place = rng.sample(pool, 3)
    verb, adj, where = rng.choice(_VERBS), rng.choice(_ADJECTIVES), rng.choice(_PLACES)
    prompt = (f"If a {maker} {verb} a {adj} {thing}, and the {thing} is {where} a {place}, "
              f"the {maker}'s {thing} must be {where} a")
    nouns = (maker, thing, place)  # the query: held-out and training items never share a noun
    if held_out:
        return {"family": "chain", "prompt": prompt, "answer": place, "query": nouns}
    return {"family": "chain", "text": f"{prompt} {place}", "query": nouns}


def chain_segments(item):
    """A training chain as textformat segments: every token trained but the three nouns' first
    mentions, random draws that nothing before them predicts (their loss is noise the copy has to
    learn through); the template and the copies of the nouns stay trained."""
    (text, _), = textformat.plain("logic", item["text"])
    segments, pos = [], 0
    for noun in item["query"]:
        at = re.compile(rf" {re.escape(noun)}\b").search(text, pos)
        segments += [(text[pos:at.start()], True), (text[at.start():at.end()], False)]
        pos = at.end()
    return segments + [(text[pos:], True)]


# family -> (generator, task whose tag and data it belongs to, the seed's own prompt and answer)
FAMILIES = {
    "doubling": (doubling, "math", "1+1=2 2+2=4 3+3=6 4+4=8 5+5=10 6+6=", "12"),
    "running": (running, "math", "1+1=2 1+2=3 1+3=4 1+4=5 1+5=6 1+6=", "7"),
    "chain": (chain, "logic", "If a beaver makes a wooden dam, and the dam is on a river, "
                              "the beaver's dam must be on a", "river"),
}


def training_items(family, n, seed):
    """n training-side items of a family (plain text for data prep)."""
    gen, rng = FAMILIES[family][0], random.Random(seed)
    return [gen(rng, held_out=False) for _ in range(n)]


def held_out_items(family, n, seed=4242):
    """n distinct held-out prompts of a family (a fixed seed: the same prompts in every run)."""
    gen, rng = FAMILIES[family][0], random.Random(seed)
    out, seen = [], set()
    for _ in range(100 * n):
        it = gen(rng, held_out=True)
        if it["prompt"] not in seen:
            seen.add(it["prompt"])
            out.append(it)
        if len(out) == n:
            return out
    raise ValueError(f"showcase family {family!r}: only {len(out)} distinct held-out prompts, {n} asked")


def chance(family, items):
    """A guesser's expected score as a fraction: one of the prompt's nouns for (c); for the sums, one
    of the distinct answers of the held-out prompts (the answer itself never appears in the prompt)."""
    if family == "chain":
        return 1 / len(items[0]["query"])
    return 1 / len({it["answer"] for it in items})


def binomial_tail(k, n, p):
    """P(X >= k) for X ~ Binomial(n, p): the chance of k or more right answers by guessing at rate p
    (the showcase's scores and eval.py's exact matches are tested against their baselines with it)."""
    if k <= 0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def prompt_ids(family, text):
    """The token ids training put before the answer: the family's task tag, as textformat.plain renders it."""
    return textformat.encode_prompt(textformat.plain(FAMILIES[family][1], text))


def first_word(text):
    """The answer a completion gives: its first whitespace-separated word ('' for none)."""
    words = text.split()
    return words[0] if words else ""


def score(complete, items):
    """complete(list of prompt texts) -> list of completions; returns [(item, answer given, right)]."""
    outs = complete([it["prompt"] for it in items])
    return [(it, first_word(o), first_word(o) == it["answer"]) for it, o in zip(items, outs)]


def greedy_completer(model, family, max_tokens=4):
    """complete() for score(): greedy completions of a family's prompts through the engine, batched."""
    from nanophi.engine import Engine, Row  # the data side imports the generators without torch

    def complete(prompts):
        engine = Engine(model, max_batch=8)
        rows = [Row(prompt_ids(family, p), max_tokens, temperature=0) for p in prompts]
        for _ in engine.run(rows):
            pass
        return [r.text for r in rows]
    return complete


def report(results, n_shown=3):
    """The printout: per family the score out of N beside chance, and a few prompts with ✓/✗ per model.
    results: {family: {model name: score() list}} (the same items for every model)."""
    lines = []
    for family, by_model in results.items():
        names = list(by_model)
        items = [it for it, _, _ in by_model[names[0]]]
        n, task = len(items), FAMILIES[family][1]
        rate = chance(family, items)
        scores = []
        for name, rows in by_model.items():  # one-sided binomial test against guessing at the chance rate
            k = sum(ok for _, _, ok in rows)
            p = binomial_tail(k, n, rate)
            scores.append(f"{name} {k}/{n} " + (f"(above chance, p={p:.2g})" if p < 0.05 else "(not above chance)"))
        lines.append(f"\n{family} ({textformat.TAGS[task]}, {n} held-out prompts): {', '.join(scores)}; "
                     f"chance {rate * n:.1f}/{n}")
        for k in range(min(n_shown, n)):
            it = items[k]
            got = "  ".join(f"{name} {'✓' if by_model[name][k][2] else '✗'} {by_model[name][k][1]!r:<8}"
                            for name in names)
            lines.append(f"  ...{it['prompt'][-48:]} -> want {it['answer']!r}:  {got}")
    return "\n".join(lines)


def run(models, n=20, n_shown=3, seed=4242):
    """Score loaded models {name: model} on every family's held-out prompts; returns report()'s input."""
    results = {}
    for family in FAMILIES:
        items = held_out_items(family, n, seed)
        results[family] = {name: score(greedy_completer(m, family), items) for name, m in models.items()}
    return results
