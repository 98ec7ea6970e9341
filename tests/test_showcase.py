"""The showcase families: training and held-out sides never share a final query, the items are right,
the data generators only emit the training side, and the scorer/printer count real completions."""
import random
import re

import torch

from model import GPT, GPTConfig
from nanophi import gen_logic, gen_math, showcase
from nanophi.tokenizer import encode


def _train_queries(family, n=3000):
    return {it["query"] for seed in (1, 2) for it in showcase.training_items(family, n, seed)}


def test_held_out_and_training_share_no_final_query():
    train = _train_queries("doubling") | _train_queries("running")
    for family in ("doubling", "running"):
        held = {it["query"] for it in showcase.held_out_items(family, 20)}
        assert held and not held & train, family
        prompts = [it["prompt"] for it in showcase.held_out_items(family, 20)]
        for seed in (1, 2):  # no training document starts with a held-out prompt (its answer would follow)
            assert not any(t["text"].startswith(p) for t in showcase.training_items(family, 3000, seed) for p in prompts)
    train_nouns = {w for q in _train_queries("chain") for w in q}
    held_nouns = {w for it in showcase.held_out_items("chain", 20) for w in it["query"]}
    assert len(held_nouns) >= 20 and not held_nouns & train_nouns
    assert set(showcase.TRAIN_NOUNS).isdisjoint(showcase.HELD_NOUNS)


def test_data_generators_emit_only_the_training_side():
    held = {it["query"] for f in ("doubling", "running") for it in showcase.held_out_items(f, 20)}
    rng = random.Random(7)
    chains = [gen_math.math_item(rng, "chain")["text"] for _ in range(3000)]
    assert not {c.split()[-1].split("=")[0] + "=" for c in chains} & held
    assert any(re.fullmatch(r"(\d+)\+\1=\d+", c.split()[0]) for c in chains)  # doubling chains are in the mix
    texts = [it["text"] for it in showcase.training_items("chain", 1000, 7)]  # data/chain/prepare.py's items
    assert not {w for t in texts for w in re.findall(r"\w+", t)} & set(showcase.HELD_NOUNS)
    # the noun chains are a task of their own: logic's items are all questions
    assert all("question" in it for _, it in gen_logic.logic_items(300, 5))


def test_chain_segments_leave_only_the_first_mentions_untrained():
    from nanophi import textformat
    for it in showcase.training_items("chain", 50, 11):
        segments = showcase.chain_segments(it)
        ids, mask = textformat.encode_segments(segments)
        whole, _ = textformat.encode_segments(textformat.plain("logic", it["text"]))
        assert ids == whole  # the same tokens as plain text: only the mask differs
        untrained = [textformat.decode([t]) for t, m in zip(ids, mask) if not m]
        assert untrained == [" " + n for n in it["query"]]  # maker, thing, place where each first appears
        assert textformat.decode(ids).endswith(" " + it["query"][2]) and mask[-1] == 1  # the answer is trained


def test_items_are_right():
    for it in showcase.held_out_items("doubling", 20) + showcase.held_out_items("running", 20):
        eqs = it["prompt"].split()
        assert len(eqs) == showcase.N_SHOTS + 1
        for eq in eqs[:-1]:
            lhs, rhs = eq.split("=")
            assert eval(lhs) == int(rhs)
        assert eval(eqs[-1].rstrip("=")) == int(it["answer"])
    for it in showcase.held_out_items("chain", 20):
        maker, thing, place = it["query"]
        assert it["answer"] == place and f"a {place}," in it["prompt"] and it["prompt"].endswith(" a")
    # the seed's own prompts are what the families generalise
    for family, (_, _, prompt, answer) in showcase.FAMILIES.items():
        assert prompt.endswith(("=", " a")) and answer


def test_chain_answers_are_one_token_copies():
    # a new noun's answer is a copy of a token in the prompt, not a spelling the model never saw
    for it in showcase.held_out_items("chain", 30):
        place = encode(" " + it["answer"])
        assert len(place) == 1 and place[0] in showcase.prompt_ids("chain", it["prompt"])


def test_prompt_is_the_training_prefix():
    text = showcase.training_items("doubling", 1, 3)[0]["text"]
    from nanophi import textformat
    ids, _ = textformat.encode_example(textformat.plain("math", text))
    prompt, answer = text.rsplit("=", 1)
    assert ids[:len(showcase.prompt_ids("doubling", prompt + "="))] == showcase.prompt_ids("doubling", prompt + "=")


def test_report_flags_a_score_not_above_chance():
    items = showcase.held_out_items("chain", 20)
    rows = lambda k: [(it, it["answer"] if i < k else "x", i < k) for i, it in enumerate(items)]  # noqa: E731
    text = showcase.report({"chain": {"base": rows(9), "finetuned": rows(14)}}, n_shown=0)
    # 9 of 20 at chance 1/3: p=0.19, not above; 14 of 20: p=0.00088
    assert "base 9/20 (not above chance), finetuned 14/20 (above chance, p=0.00088); chance 6.7/20" in text


def test_score_counts_first_words():
    items = showcase.held_out_items("running", 4)
    answers = [it["answer"] for it in items]
    outs = [f"{answers[0]} 3+4=7", f" {answers[1]}", "", "x" + answers[3]]
    rows = showcase.score(lambda prompts: outs[:len(prompts)], items)
    assert [ok for _, _, ok in rows] == [True, True, False, False]
    assert [got for _, got, _ in rows] == [answers[0], answers[1], "", "x" + answers[3]]


def test_report_on_a_tiny_random_gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=128, vocab_size=50304, n_layer=1, n_head=2, n_embd=32)).eval()
    results = showcase.run({"base": model, "finetuned": model}, n=5, n_shown=2)
    text = showcase.report(results, n_shown=2)
    for family in showcase.FAMILIES:
        rows = results[family]["base"]
        assert len(rows) == 5 and rows == results[family]["finetuned"]  # greedy: the same model, the same words
        right = sum(ok for _, _, ok in rows)
        head = re.search(rf"^{family} \(\[\w+\], 5 held-out prompts\): base (\d)/5 \((.*?)\), finetuned (\d)/5 \((.*?)\); "
                         rf"chance (\S+)/5$", text, re.M)
        assert head and int(head[1]) == int(head[3]) == right and head[2] == head[4], text
        p = showcase.binomial_tail(right, 5, showcase.chance(family, [it for it, _, _ in rows]))
        assert head[2] == (f"above chance, p={p:.2g}" if p < 0.05 else "not above chance"), text
    assert text.count("want ") == 2 * len(showcase.FAMILIES)
    assert re.search(r"base [✓✗] .* finetuned [✓✗]", text)
    assert "chance 1.7/5" in text  # the chain family: one of three nouns
