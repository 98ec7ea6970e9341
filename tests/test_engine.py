"""nanophi/engine.py: continuous batching and prefix reuse give each row exactly its text alone (fp32)."""
import pytest
import torch

from model import GPT, GPTConfig
from nanophi.engine import Engine, Row, row_generator
from nanophi.tokenizer import EOT_ID, decode, encode


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=128, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)).eval()


PROMPTS = [encode("Hello world"), encode("The quick brown fox jumps over the lazy dog"), encode("a"),
           encode("word " * 110)]  # the last runs past the context (128) while generating


def alone(model, prompt, n, **kw):
    return Engine(model, max_batch=1).complete(prompt, n, **kw)


def test_greedy_rows_batched_equal_each_alone_and_model_generate(model):
    want = [alone(model, p, 40, temperature=0) for p in PROMPTS]
    for p, (text, finish) in zip(PROMPTS, want):
        ids = model.generate(torch.tensor([p]), 40, temperature=0, stop_ids=[EOT_ID])[0, len(p):].tolist()
        assert text == decode(ids[:ids.index(EOT_ID)] if EOT_ID in ids else ids)
    # all at once, prompts of different lengths, prefilled in small chunks (several steps each)
    engine = Engine(model, max_batch=4, prefill_chunk=16, prefill_alone=16)
    rows = [Row(p, 40, temperature=0) for p in PROMPTS]
    list(engine.run(rows))
    assert [(r.text, r.finish) for r in rows] == want


def test_a_prompt_alone_takes_bigger_chunks_than_beside_decoding_rows(model):
    engine = Engine(model, max_batch=2, prefill_chunk=16, prefill_alone=64)
    row = Row(PROMPTS[3][:100], 20, temperature=0)
    engine.add(row)
    engine.step()  # nothing decodes: nobody waits on this step, 64 tokens
    assert len(row.todo) == 100 - 64
    engine.step()  # the rest, and the row's first token
    assert row.n_tokens == 1
    other_prompt = encode("other " * 40)  # shares no prefix with the first
    other = Row(other_prompt, 3, temperature=0)
    engine.add(other)
    engine.step()  # the first row decodes beside it: its wait for a token is bounded by a 16-token chunk
    assert len(other.todo) == len(other_prompt) - 16 and row.n_tokens == 2
    while engine.busy:
        engine.step()
    assert (row.text, row.finish) == alone(model, PROMPTS[3][:100], 20, temperature=0)


def test_rows_joining_and_leaving_between_steps_keep_their_text(model):
    want = [alone(model, p, n, temperature=1.0, top_k=50, generator=row_generator(100 + i))
            for i, (p, n) in enumerate(zip(PROMPTS, (5, 30, 12, 20)))]
    engine = Engine(model, max_batch=2, prefill_chunk=8, prefill_alone=8)  # fewer slots than rows: some wait
    rows = [Row(p, n, temperature=1.0, top_k=50, generator=row_generator(100 + i))
            for i, (p, n) in enumerate(zip(PROMPTS, (5, 30, 12, 20)))]
    engine.add(rows[0])
    engine.step()
    engine.step()
    for r in rows[1:]:  # join while row 0 decodes
        engine.add(r)
    steps = 0
    while any(r.finish is None for r in rows):
        engine.step()
        steps += 1
        assert len(engine.rows) <= 2
    assert [(r.text, r.finish) for r in rows] == want
    assert steps < sum(r.n_tokens for r in rows)  # rows really shared forward passes


def test_a_continued_prompt_reuses_the_cache(model):
    engine = Engine(model, max_batch=1, cache_slots=1)
    first = PROMPTS[1]
    text, _ = engine.complete(first, 10, temperature=0)
    follow = first + encode(text) + encode(" and then")
    reused = engine.reused
    got = engine.complete(follow, 10, temperature=0)
    assert engine.reused - reused >= len(first)  # at least the first prompt was not computed again
    assert got == alone(model, follow, 10, temperature=0)
    # n rows of one prompt: the later ones copy the first one's prefill
    engine = Engine(model, max_batch=3, cache_slots=0)
    rows = [Row(follow, 6, temperature=1.0, generator=row_generator(7, j)) for j in range(3)]
    list(engine.run(rows))
    assert engine.reused >= 2 * (len(follow) - 1)
    assert [r.text for r in rows] == [alone(model, follow, 6, temperature=1.0, generator=row_generator(7, j))[0]
                                      for j in range(3)]


def test_memory_is_bounded_least_recently_used_slot_goes(model):
    engine = Engine(model, max_batch=1, cache_slots=1)  # two slots in all
    a, b, c = encode("alpha beta gamma delta"), encode("one two three four"), encode("red green blue")
    for p in (a, b, c):
        engine.complete(p, 3, temperature=0)
    assert engine.cache.k.size(1) == 2
    reused = engine.reused
    engine.complete(c + encode(" x"), 3, temperature=0)  # c's slot was kept
    assert engine.reused - reused == len(c)
    reused = engine.reused
    engine.complete(a + encode(" x"), 3, temperature=0)  # a's was dropped for c
    assert engine.reused == reused


def test_stop_strings_and_finish_reasons(model):
    text, finish = alone(model, PROMPTS[0], 30, temperature=0)
    assert finish == "length" and len(text) > 20
    stop = text[10:14]
    assert alone(model, PROMPTS[0], 30, temperature=0, stops=[stop]) == (text[:text.find(stop)], "stop")
    with pytest.raises(ValueError, match="at least one prompt token"):
        Row([], 5)


def test_conversations_sharing_a_system_line_do_not_evict_each_other(model):
    engine = Engine(model, max_batch=1, cache_slots=2)
    system = encode("[Chat]\n[System]: You are a patient tutor who answers in one short sentence.")
    a, b = system + encode("\n[Human]: What is a prime?"), system + encode("\n[Human]: Why is the sky blue?")
    ta, _ = engine.complete(a, 5, temperature=0)
    reused = engine.reused
    engine.complete(b, 5, temperature=0)
    assert len(system) <= engine.reused - reused < len(b) - 1  # b copied the common system line ...
    reused = engine.reused
    engine.complete(a + encode(ta) + encode("\n[Human]: more"), 5, temperature=0)
    assert engine.reused - reused >= len(a)  # ... and did not take a's slot


def test_short_prompts_arriving_together_share_one_prefill_pass(model):
    calls = []
    hook = model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    try:
        engine = Engine(model, max_batch=4)
        prompts = PROMPTS[:2] + [encode("one two three")]  # 2, 9 and 3 tokens
        rows = [Row(p, 5, temperature=0) for p in prompts]
        for r in rows:
            engine.add(r)
        engine.step()
        assert [r.n_tokens for r in rows] == [1, 1, 1]  # every prompt in, its first token drawn ...
        assert calls == [torch.Size([3, 9])]  # ... in one forward pass, the shorter prompts padded
        list(engine.run(rows))
    finally:
        hook.remove()
    assert [(r.text, r.finish) for r in rows] == [alone(model, p, 5, temperature=0) for p in prompts]
    # padding that would outweigh the real tokens: the long prompt gets a pass of its own
    engine, calls[:] = Engine(model, max_batch=4), []
    hook = model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    try:
        engine.add(Row(PROMPTS[0], 2, temperature=0))
        engine.add(Row(PROMPTS[3][:60], 2, temperature=0))
        engine.step()
    finally:
        hook.remove()
    assert sorted(calls) == [torch.Size([1, 2]), torch.Size([1, 60])]


def test_rows_scattered_over_the_cache_attend_each_to_their_own_keys(model):
    engine = Engine(model, max_batch=3, cache_slots=3)
    a, b, c = encode("alpha beta gamma delta"), encode("one two three four"), encode("red green blue")
    for p in (a, b, c):  # slots 0, 1, 2
        engine.complete(p, 3, temperature=0)
    follow = b + encode(engine.complete(b, 3, temperature=0)[0]) + encode(" five six")
    prompts = [follow, encode("The quick brown fox"), encode("a b c d e f g h")]
    rows = [Row(p, 12, temperature=0) for p in prompts]
    list(engine.run(rows))
    assert sorted(r.slot for r in rows) == [1, 3, 4]  # the continued conversation kept its slot
    assert [(r.text, r.finish) for r in rows] == [alone(model, p, 12, temperature=0) for p in prompts]


def test_unwritten_cache_positions_never_reach_the_output(model):
    """The cache is allocated empty (its memory is garbage until written): here it starts as NaN. Rows of
    different lengths decode in one view of the cache and read masked positions past their own end,
    and a slot is reused after a longer conversation; every text must equal the row's text alone."""
    engine = Engine(model, max_batch=3, cache_slots=0)
    engine._alloc()
    engine.cache.k.fill_(float("nan"))
    engine.cache.v.fill_(float("nan"))
    long_text = engine.complete(PROMPTS[3][:60], 20, temperature=0)  # slot 0: 80 positions written
    assert long_text == alone(model, PROMPTS[3][:60], 20, temperature=0)
    prompts = [encode("one two"), PROMPTS[1], encode("red green blue yellow")]
    rows = [Row(p, 25, temperature=0) for p in prompts]
    list(engine.run(rows))
    assert sorted(r.slot for r in rows) == [0, 1, 2]  # slot 0, the long conversation's, taken over
    assert [(r.text, r.finish) for r in rows] == [alone(model, p, 25, temperature=0) for p in prompts]
    for s in range(3):  # what a row may read is finite; the rest was never touched
        k = engine.cache.k[:, s]
        assert not k[:, :, :engine.cache.clean[s]].isnan().any()
        assert k[:, :, engine.cache.clean[s]:].isnan().all()


def test_warm_up_leaves_the_engine_as_new(model):
    """serve.py warms its engine before the first request: afterwards nothing of it shows."""
    engine = Engine(model, max_batch=2)
    engine.warm_up()
    assert engine.cache is not None and engine.steps == engine.tokens == engine.reused == 0
    assert all(ids == [] for ids in engine.slot_ids) and int(engine.cache.lens.sum()) == 0
    for p in PROMPTS[:3]:
        assert engine.complete(p, 12, temperature=0) == alone(model, p, 12, temperature=0)
    assert engine.reused == 0  # no prompt found the warm-up's tokens
