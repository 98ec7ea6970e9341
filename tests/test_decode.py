"""nanophi/decode.py: the one-call decoding step against model.forward on the same weights and cache,
in every weight format, rows alone or together, through the engine, and where it must not be used."""
import pytest
import torch
from torch import nn

from model import GPT, GPTConfig
from nanophi import decode, gemv
from nanophi.engine import Engine, KVCache, Row
from nanophi import weights
from nanophi.weights import apply_weights

# n_embd 40 over 4 heads: head size 10 and widths that are not a multiple of 8 or 16 reach every scalar tail
SHAPES = [dict(n_layer=2, n_head=4, n_embd=40, block_size=48, vocab_size=101, bias=True),
          dict(n_layer=3, n_head=2, n_embd=64, block_size=48, vocab_size=77, bias=False)]
# blas: the plain nn.Linear model, fp32: FP32Linear's kernel; bf16: fbgemm's fp16 GEMM on a CPU without native
# bf16 (the kernel on one with), bf16-kernel: the rows kernel, as where torch has no fbgemm
FORMATS = ["blas", "fp32", "bf16", "bf16-kernel", "int8"]


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if gemv.fp32_kernel() is None:
        pytest.skip(f"no gemv extension here ({gemv.unavailable()}): the engine runs model.forward")


def tiny(shape, fmt, seed=0, int8_from=0):
    """int8_from: from how many rows int8 steps take fbgemm's copy (gemv.int8_packed_from; 0: the kernel only,
    whatever this machine measured)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**shape)).eval()
    with torch.no_grad():  # LayerNorms and biases away from 1 and 0, so a wrong one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    if fmt == "fp32":
        return apply_weights(model, "fp32", batch=8)  # above 2 rows: FP32Linear, the fp32 kernel
    if fmt == "bf16-kernel":
        saved, weights._fp16_ok = weights._fp16_ok, False
        try:
            return apply_weights(model, "bf16")
        finally:
            weights._fp16_ok = saved
    if fmt == "int8":
        saved = gemv._state.get("int8_packed_from")
        gemv._state["int8_packed_from"] = int8_from
        try:
            return apply_weights(model, "int8")
        finally:
            if saved is None:
                del gemv._state["int8_packed_from"]
            else:
                gemv._state["int8_packed_from"] = saved
    return model if fmt == "blas" else apply_weights(model, fmt)


def prefilled(model, prompts):
    """A cache with each prompt prefilled by model.forward in its own slot."""
    cache = KVCache(model.config, len(prompts) + 1, model.config.block_size, "cpu", torch.float32)
    with torch.no_grad():
        for s, p in enumerate(prompts):
            model(torch.tensor([p]), cache=cache, slots=[s], last_only=True)
    return cache


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_decoder_step_equals_model_forward(shape, fmt):
    model = tiny(shape, fmt)
    dec = decode.decoder(model)
    assert dec is not None
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, shape["vocab_size"], (n,), generator=g).tolist() for n in (5, 1, 17)]
    new = [3, 8, 60]
    ours, theirs = prefilled(model, prompts), prefilled(model, prompts)
    with torch.no_grad():
        want = torch.cat([model(torch.tensor([[t]]), cache=theirs, slots=[s], last_only=True)[0][:, -1]
                          for s, t in enumerate(new)])
    got = dec.step(new, [0, 1, 2], [len(p) for p in prompts], ours.k, ours.v)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for s, p in enumerate(prompts):  # the new token's keys and values, where model.forward wrote them
        torch.testing.assert_close(ours.k[:, s, :, :len(p) + 1], theirs.k[:, s, :, :len(p) + 1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.v[:, s, :, :len(p) + 1], theirs.v[:, s, :, :len(p) + 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "bf16-kernel", "int8"])  # BLAS sums 1 row and 5 differently
def test_a_rows_numbers_do_not_depend_on_its_batch_mates(fmt):
    model = tiny(SHAPES[0], fmt)
    dec = decode.decoder(model)
    fbgemm = any(getattr(m, "fp16", None) is not None for m in model.modules())
    assert fbgemm == (fmt == "bf16" and weights.fp16_packing() and not model.lm_head.native)
    prompts = [[1, 2, 3], [4] * 30, [7, 8], [9] * 11, [5]]
    together = prefilled(model, prompts)
    both = dec.step([10, 11, 12, 13, 14], [0, 1, 2, 3, 4], [3, 30, 2, 11, 1], together.k, together.v)
    for i, p in enumerate(prompts):
        alone = prefilled(model, prompts)
        one = dec.step([10 + i], [i], [len(p)], alone.k, alone.v)
        if fbgemm:  # fbgemm's fp16 GEMM sums 1, 2 and 3+ rows in different orders: rounding apart
            torch.testing.assert_close(one[0], both[i], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(one[0], both[i]), f"row {i} changed with its batch"


def test_int8_steps_of_packed_from_rows_take_fbgemms_copy():
    """From gemv.int8_packed_from rows (4 on a 2-core EPYC with VNNI) batched int8 steps go through
    fbgemm's copy, in the Decoder as in model.forward; fewer rows keep the kernel."""
    model = tiny(SHAPES[0], "int8", int8_from=4)
    layer = model.transformer.h[0].mlp.c_fc
    assert layer.packed_from == 4 and model.lm_head.packed_from == 0  # the head keeps no fbgemm copy
    x = torch.randn(4, layer.in_features)
    with torch.no_grad():
        assert torch.equal(layer(x), torch.ops.quantized.linear_dynamic(x, layer.packed, True))
        assert torch.equal(layer(x[:3]), layer.gemv(x[:3], layer.weight, layer.scale, layer.bias))
    dec = decode.decoder(model)
    prompts = [[1, 2, 3], [4] * 30, [7, 8], [9] * 11, [5]]
    ours, theirs, third = (prefilled(model, prompts) for _ in range(3))
    slots, pos, new = [0, 1, 2, 3, 4], [len(p) for p in prompts], [10, 11, 12, 13, 14]
    with torch.no_grad():
        want = model(torch.tensor([[t] for t in new]), cache=theirs, slots=slots, last_only=True)[0][:, -1]
        kernel_only = decode.decoder(tiny(SHAPES[0], "int8")).step(new, slots, pos, third.k, third.v)
    got = dec.step(new, slots, pos, ours.k, ours.v)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, kernel_only, rtol=1e-6, atol=1e-6)  # fbgemm's quantized activations


@pytest.mark.parametrize("fmt", FORMATS)
def test_engine_text_is_the_same_with_and_without_the_decoder(fmt, monkeypatch):
    model = tiny(SHAPES[1], fmt, seed=3)

    def run(use, kv_dtype):
        monkeypatch.setenv("NANOPHI_DECODER", "1" if use else "0")
        engine = Engine(model, max_batch=4, kv_dtype=kv_dtype)
        rows = [Row([1, 2, 3 + i], 20, temperature=0 if i % 2 else 0.8, top_k=20, stop_ids=(),
                    generator=torch.Generator().manual_seed(i)) for i in range(4)]
        list(engine.run(rows))
        assert bool(engine.decoder) == use
        return [r.seen for r in rows], engine.cache.k.dtype
    plain, dtype = run(False, "auto")
    assert dtype == torch.float32  # model.forward alone: the model's dtype
    assert run(True, "float32") == (plain, torch.float32)
    # the default with the Decoder: an fp16 cache, keys and values rounded; on this model the same text
    assert run(True, "auto") == (plain, torch.float16)


@pytest.mark.parametrize("fmt", ["blas", "int8"])
def test_an_fp16_cache_stays_close_to_fp32(fmt):
    """The Decoder on an fp16 KV cache (the engine's default on CPU) against model.forward on an fp32 one."""
    model = tiny(SHAPES[0], fmt)
    dec = decode.decoder(model)
    prompts = [[1, 2, 3, 4, 5] * 6, [9, 8]]
    exact = prefilled(model, prompts)
    half = KVCache(model.config, 3, model.config.block_size, "cpu", torch.float16)
    with torch.no_grad():  # the prompts through model.forward into the fp16 cache (prefill writes, then reads it)
        for s, p in enumerate(prompts):
            model(torch.tensor([p]), cache=half, slots=[s], last_only=True)
        want = torch.cat([model(torch.tensor([[7]]), cache=exact, slots=[s], last_only=True)[0][:, -1] for s in (0, 1)])
    got = dec.step([7, 7], [0, 1], [30, 2], half.k, half.v)
    assert half.k.dtype == torch.float16
    torch.testing.assert_close(got, want, rtol=0, atol=3e-3 * want.abs().max().item())
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_decoding_to_the_end_of_the_context():
    model = tiny(SHAPES[0], "fp32")
    engine = Engine(model, max_batch=1)
    row = Row([5], 200, temperature=0, stop_ids=())  # past block_size 48: the engine restarts its window
    list(engine.run([row]))
    assert engine.decoder and row.n_tokens == 200 and row.finish == "length"


def test_models_it_does_not_know_run_model_forward(monkeypatch):
    model = tiny(SHAPES[0], "blas")
    model.train()
    assert decode.decoder(model) is None  # training: dropout and autograd are model.forward's
    model.eval()
    model.transformer.h[1].mlp.c_fc = nn.Sequential(model.transformer.h[1].mlp.c_fc)  # a wrapped Linear (as LoRA's)
    assert decode.decoder(model) is None
    monkeypatch.setenv("NANOPHI_DECODER", "0")
    assert decode.decoder(tiny(SHAPES[0], "int8")) is None


def test_bad_steps_name_what_is_wrong():
    model = tiny(SHAPES[0], "int8")
    dec = decode.decoder(model)
    cache = prefilled(model, [[1, 2]])
    with pytest.raises(RuntimeError, match="position 48 is past"):
        dec.step([3], [0], [48], cache.k, cache.v)
    with pytest.raises(RuntimeError, match="token id 101 is not below 101"):
        dec.step([101], [0], [2], cache.k, cache.v)
    with pytest.raises(RuntimeError, match="slot 2 is not in the cache's 2"):
        dec.step([3], [2], [2], cache.k, cache.v)
    with pytest.raises(RuntimeError, match="contiguous fp32 or fp16"):
        dec.step([3], [0], [2], cache.k.bfloat16(), cache.v.bfloat16())
