"""model.py against transformers' GPT-2 on randomly initialised checkpoints built here."""
import os
from dataclasses import asdict

import pytest
import torch
from transformers import GPT2LMHeadModel

from conftest import make_hf_dir
from model import GPT, GPTConfig
from nanophi.device import peak_flops_by_name
from nanophi.engine import Engine, KVCache, Row


def hf_and_ours(path):
    hf = GPT2LMHeadModel.from_pretrained(path).eval()
    ours = GPT.from_pretrained(path).eval()
    return hf, ours


@pytest.mark.slow
@pytest.mark.parametrize("shape", [
    dict(n_layer=12, n_head=12, n_embd=768),   # gpt2 (124M)
    dict(n_layer=24, n_head=16, n_embd=1024),  # gpt2-medium (355M)
], ids=["gpt2", "gpt2-medium"])
def test_from_pretrained_logits_match_transformers(tmp_path, shape):
    path = make_hf_dir(str(tmp_path / "hf"), n_positions=1024, seed=1, **shape)
    hf, ours = hf_and_ours(path)
    assert ours.config.n_layer == shape["n_layer"] and ours.config.block_size == 1024
    x = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(x).logits
        got, _ = ours(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.slow
def test_greedy_engine_matches_generate_and_transformers(tiny_hf_dir):
    hf, ours = hf_and_ours(tiny_hf_dir)
    x = torch.randint(0, 50257, (2, 7), generator=torch.Generator().manual_seed(1))
    reference = ours.generate(x, 40, temperature=0)
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False,
                       pad_token_id=50256)
    assert torch.equal(reference, want)
    assert torch.equal(engine_greedy(ours, x, 40), want)


def engine_greedy(model, x, n):
    """The engine's greedy ids for each row of x (B, T) -> (B, T + n), no stop id."""
    rows = [Row(p, n, temperature=0, stop_ids=()) for p in x.tolist()]
    list(Engine(model, max_batch=len(rows)).run(rows))
    return torch.tensor([r.seen for r in rows])


def test_generate_past_block_size_keeps_going_as_the_engine(tiny_hf_dir):
    ours = GPT.from_pretrained(tiny_hf_dir).eval()  # block_size 128
    x = torch.randint(0, 50257, (1, 120), generator=torch.Generator().manual_seed(4))
    out = ours.generate(x, 150, temperature=0)  # two restarts of the window
    assert out.shape == (1, 270)
    assert torch.equal(out, engine_greedy(ours, x, 150))


def test_chunked_prefill_with_cache_matches_full_forward(tiny_hf_dir):
    ours = GPT.from_pretrained(tiny_hf_dir).eval()
    x = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        full, _ = ours(x)
        cache = KVCache(ours.config, 2, 64, "cpu", torch.float32)
        a, _ = ours(x[:, :8], cache=cache)
        b, _ = ours(x[:, 8:15], cache=cache)  # a chunk of 7 on top of 8 cached positions
        c, _ = ours(x[:, 15:16], cache=cache)
    assert torch.allclose(torch.cat([a, b, c], 1), full[:, :16], atol=1e-5)


def test_stop_ids_stop_each_row_and_pad(tiny_hf_dir):
    ours = GPT.from_pretrained(tiny_hf_dir).eval()
    x = torch.randint(0, 50257, (3, 5), generator=torch.Generator().manual_seed(2))
    free = ours.generate(x, 12, temperature=0)
    stop = int(free[0, 5 + 3])  # row 0's 4th new token becomes a stop id
    out = ours.generate(x, 12, temperature=0, stop_ids=[stop], pad_id=-1)
    row0 = out[0, 5:].tolist()
    first = row0.index(stop)
    assert first <= 3 and all(t == -1 for t in row0[first + 1:])
    for r in range(3):  # rows that never produce the stop id are unaffected
        if stop not in free[r, 5:].tolist():
            assert torch.equal(out[r], free[r])


@pytest.mark.slow
def test_sampling_controls(tiny_hf_dir):
    ours = GPT.from_pretrained(tiny_hf_dir).eval()
    x = torch.randint(0, 50257, (2, 6), generator=torch.Generator().manual_seed(3))
    greedy = ours.generate(x, 10, temperature=0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(ours.generate(x, 10, temperature=1.0, top_k=1, generator=g), greedy)
    assert torch.equal(ours.generate(x, 10, temperature=1.0, top_p=1e-6, generator=g), greedy)
    # same seed, same samples; different seeds, different samples
    s1 = ours.generate(x, 10, temperature=1.0, generator=torch.Generator().manual_seed(5))
    s2 = ours.generate(x, 10, temperature=1.0, generator=torch.Generator().manual_seed(5))
    s3 = ours.generate(x, 10, temperature=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    # top_k=5 only ever picks one of the 5 most likely tokens
    with torch.no_grad():
        logits, _ = ours(x)
    top5 = torch.topk(logits[:, -1], 5).indices
    for seed in range(10):
        nxt = ours.generate(x, 1, temperature=2.0, top_k=5, generator=torch.Generator().manual_seed(seed))[:, -1]
        assert all(nxt[b] in top5[b] for b in range(2))


def test_repetition_controls_prevent_repeats():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=1, n_head=2, n_embd=32)).eval()
    x = torch.tensor([[10, 11, 12]])
    out = m.generate(x, 30, temperature=0, no_repeat_ngram_size=2)[0].tolist()
    bigrams = list(zip(out, out[1:]))
    assert len(bigrams) == len(set(bigrams))
    out = m.generate(x, 20, temperature=0, repetition_penalty=1e9)[0].tolist()
    assert len(out) == len(set(out))  # an infinite penalty never repeats a token
    assert max(m.generate(x, 20, temperature=1.0)[0].tolist()) < 50257  # padded rows never sampled


def test_resize_block_size_grows_and_crops(tiny_hf_dir):
    ours = GPT.from_pretrained(tiny_hf_dir).eval()
    old = ours.transformer.wpe.weight.detach().clone()  # (128, C)
    x = torch.randint(0, 50257, (1, 40))
    with torch.no_grad():
        before, _ = ours(x)
    grown = GPT.from_pretrained(tiny_hf_dir, override_args={"block_size": 512}).eval()
    w = grown.transformer.wpe.weight.detach()
    assert w.shape == (512, old.size(1)) and grown.config.block_size == 512
    assert torch.allclose(w[0], old[0]) and torch.allclose(w[-1], old[-1])  # interpolation keeps the ends
    mid = (old[63] + old[64]) / 2  # position 255.5/511*127 ~ 63.5 lies between old 63 and 64
    assert torch.allclose((w[255] + w[256]) / 2, mid, atol=1e-2)
    with torch.no_grad():
        logits, _ = grown(torch.randint(0, 50257, (1, 400)))
    assert logits.shape == (1, 400, 50257)
    ours.crop_block_size(64)
    with torch.no_grad():
        after, _ = ours(x)
    assert ours.transformer.wpe.weight.shape[0] == 64
    assert torch.allclose(before, after, atol=1e-6)  # cropping keeps the first positions
    with pytest.raises(ValueError, match="exceeds block_size"):
        ours(torch.randint(0, 50257, (1, 65)))


def test_loss_masking_and_reductions():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=100, n_layer=1, n_head=1, n_embd=16))
    x = torch.randint(0, 100, (2, 8))
    y = torch.randint(0, 100, (2, 8))
    y[:, :4] = -1
    _, mean = m(x, y)
    _, total = m(x, y, reduction="sum")
    assert torch.allclose(mean * 8, total)
    _, none = m(x, torch.full_like(y, -1))
    assert none.item() == 0.0  # all masked: zero, never NaN
    none.backward()


@pytest.mark.parametrize("masked", [False, True])
def test_loss_path_same_loss_and_gradients_as_cross_entropy(masked):
    """model.CrossEntropySum (gradient in the logits' memory) against F.cross_entropy on every position."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=300, n_layer=1, n_head=2, n_embd=32))
    x = torch.randint(0, 300, (3, 16))
    y = torch.randint(0, 300, (3, 16))
    if masked:
        y[:, :5] = -1
    _, loss = m(x, y)
    loss.backward()
    ours = {k: p.grad.clone() for k, p in m.named_parameters()}
    m.zero_grad()
    h = m.transformer
    hidden = h.ln_f(torch.nn.Sequential(*h.h)(h.wte(x) + h.wpe(torch.arange(16))))
    want = F.cross_entropy(m.lm_head(hidden).view(-1, 300), y.view(-1), ignore_index=-1)
    want.backward()
    assert torch.allclose(loss, want, atol=1e-6)
    for k, p in m.named_parameters():
        assert torch.allclose(ours[k], p.grad, atol=1e-6, rtol=1e-4), k
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):  # no silent second backward
        _, again = m(x, y)
        again.backward(retain_graph=True)
        again.backward()


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=2, n_embd=16)
    a = GPT(cfg)
    b = GPT(GPTConfig(**{**asdict(cfg), "gradient_checkpointing": True}))
    b.load_state_dict(a.state_dict())
    x, y = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    a(x, y)[1].backward()
    b(x, y)[1].backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)


def test_optimizer_groups_and_flops():
    m = GPT(GPTConfig(block_size=32, vocab_size=128, n_layer=2, n_head=2, n_embd=16))
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() < 2 for p in no_decay["params"])
    N = m.get_num_params()
    assert m.flops_per_token() == 6 * N + 12 * 2 * 2 * 8 * 32
    mfu, achieved = m.estimate_mfu(fwdbwd_per_iter=4, seconds=0.5)
    assert mfu is None and achieved == pytest.approx(m.flops_per_token() * 32 * 4 / 0.5)
    mfu, _ = m.estimate_mfu(fwdbwd_per_iter=4, seconds=0.5, peak_flops=peak_flops_by_name("Tesla T4"))
    assert mfu == pytest.approx(achieved / 65e12)


def test_five_adamw_steps_match_transformers(tmp_path):
    """llm.c's check: from the same weights, five AdamW steps (clipped, weight decay on matrices)
    give the same losses and weights in model.py and transformers, with masked targets."""
    from transformers import GPT2Config
    torch.manual_seed(0)
    hf_cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=512, bos_token_id=0, eos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(hf_cfg).save_pretrained(str(tmp_path / "hf"))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).train()
    ours = GPT.from_pretrained(str(tmp_path / "hf")).train()
    ours_opt = ours.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    hf_params = [p for p in hf.parameters()]  # tied lm_head appears once
    hf_opt = torch.optim.AdamW([{"params": [p for p in hf_params if p.dim() >= 2], "weight_decay": 0.1},
                                {"params": [p for p in hf_params if p.dim() < 2], "weight_decay": 0.0}],
                               lr=1e-2, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, 512, (4, 17), generator=g)  # one batch, as llm.c: 16 inputs, 16 targets
    keep = torch.rand(4, 16, generator=g) > 0.4  # masked targets, as prompt tokens in SFT
    x, y = seq[:, :16], torch.where(keep, seq[:, 1:], -1)
    losses = {"ours": [], "hf": []}
    for step in range(5):
        _, loss = ours(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)
        # transformers shifts labels itself: label j is predicted at position j - 1; -100 = no loss
        labels = torch.cat([seq[:, :1], torch.where(keep, seq[:, 1:], -100)], dim=1)
        hf_loss = hf(seq, labels=labels).loss
        hf_loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        losses["ours"].append(loss.item())
        losses["hf"].append(hf_loss.item())
    assert losses["ours"][-1] < losses["ours"][0] - 0.1  # the steps really trained
    torch.testing.assert_close(torch.tensor(losses["ours"]), torch.tensor(losses["hf"]), rtol=1e-5, atol=1e-5)
    hf_sd = hf.state_dict()
    for k, v in ours.state_dict().items():  # Adam turns rounding-level gradient differences into
        want = hf_sd[k].t() if k.endswith(GPT.TRANSPOSED) else hf_sd[k]  # steps of up to lr on tiny ones
        torch.testing.assert_close(v, want, rtol=0, atol=1e-2 * 5e-2, msg=k)
