"""nanophi/sampling.py: the next id from a row's logits, and the one rule for an over-long context."""
import pytest
import torch

from nanophi.sampling import GPT2_VOCAB, fit_context, sample_next


@pytest.mark.parametrize("n, block_size, room, kept", [
    (10, 16, 1, 10),   # fits with room for one more: all of it
    (16, 16, 1, 15),   # one too many: drop from the front only what is needed
    (16, 16, 12, 8),   # a long generation ahead: restart from half a window, not block_size - room
    (100, 16, 1, 15),
])
def test_fit_context_keeps_the_last_ids_that_leave_room(n, block_size, room, kept):
    ids = list(range(n))
    assert fit_context(ids, block_size, room) == ids[-kept:]


def test_top_k_and_top_p_only_draw_from_the_kept_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0] + [-1.0] * 45])
    seen = torch.tensor([[0]])
    draws = {int(sample_next(logits.clone(), seen, 5.0, top_k=2, generator=torch.Generator().manual_seed(s)))
             for s in range(60)}
    assert draws == {0, 1}  # a high temperature would reach others without top_k
    p0 = torch.softmax(logits[0], -1)[0].item()  # ~0.61: top_p just above it keeps ids 0 and 1
    draws = {int(sample_next(logits.clone(), seen, 1.0, top_p=p0 + 0.01, generator=torch.Generator().manual_seed(s)))
             for s in range(60)}
    assert draws == {0, 1}


def test_padded_vocabulary_rows_are_never_sampled():
    logits = torch.zeros(2, 50304)
    logits[:, GPT2_VOCAB:] = 100.0  # nanoGPT's padding rows: never real tokens
    seen = torch.tensor([[1], [2]])
    assert (sample_next(logits.clone(), seen, 0) < GPT2_VOCAB).all()
    assert (sample_next(logits.clone(), seen, 1.0, generator=torch.Generator().manual_seed(0)) < GPT2_VOCAB).all()


def test_no_repeat_ngram_bans_the_token_that_would_repeat_a_bigram():
    logits = torch.zeros(1, 50)
    logits[0, 5], logits[0, 6] = 3.0, 2.0
    seen = torch.tensor([[4, 5, 9, 4]])  # "4 5" was seen: after a final 4, 5 would repeat it
    assert int(sample_next(logits.clone(), seen, 0)) == 5
    assert int(sample_next(logits.clone(), seen, 0, no_repeat_ngram_size=2)) == 6


def test_stop_ids_are_exempt_from_repetition_controls():
    logits = torch.zeros(1, 50304)
    logits[0, 7] = 5.0  # the stop id is the most likely token and already in the context
    logits[0, 9] = 4.0
    seen = torch.tensor([[3, 7, 4, 7]])
    args = dict(temperature=0, top_k=None, top_p=None, generator=None)
    assert sample_next(logits.clone(), seen, repetition_penalty=10.0, no_repeat_ngram_size=0, **args) == 9
    assert sample_next(logits.clone(), seen, repetition_penalty=1.0, no_repeat_ngram_size=1, **args) == 9
    stop = torch.tensor([7])
    assert sample_next(logits.clone(), seen, repetition_penalty=10.0, no_repeat_ngram_size=1, stop=stop, **args) == 7


def test_tiny_temperatures_are_greedy():
    logits = torch.randn(3, 50304, generator=torch.Generator().manual_seed(0))
    seen = torch.tensor([[1], [2], [3]])
    for t in (1e-45, 1e-30, 1e-6):  # logits / 1e-45 are inf: softmax NaN, and the draw picked id 50256
        got = sample_next(logits.clone(), seen, t, generator=torch.Generator().manual_seed(1))
        assert torch.equal(got, logits[:, :50257].argmax(-1))
        per_row = sample_next(logits.clone(), seen, t, generator=[torch.Generator().manual_seed(i) for i in range(3)])
        assert torch.equal(per_row, got)
