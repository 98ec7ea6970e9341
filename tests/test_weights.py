"""nanophi/weights.py: bf16 and int8 weights close to fp32 on a tiny model; sample.py with each format;
BF16Linear and Int8Linear with and without nanophi/gemv.py's kernels (the kernels themselves: test_gemv.py)."""
import copy
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch.nn import functional as F

from conftest import ROOT
from nanophi.device import cpu_has_bf16
from nanophi.engine import Engine, KVCache, Row
from nanophi import gemv, weights
from nanophi.weights import (INT8_GEMV_ROWS, NATIVE_ROWS, SMALL_ROWS, WIDE_ROWS, BF16Linear, FP32Linear, Int8Linear, apply_weights,
                             can_pack, quantize_rows, resolve_weights, weight_bytes_per_token)

# bf16 on a CPU: native bf16 (oneDNN), or the gemv kernel that widens it to fp32 (AVX2 CPUs)
BF16_OK = cpu_has_bf16() or gemv.kernel() is not None
FORMATS = ["int8"] + (["bf16"] if BF16_OK else [])


@pytest.fixture(scope="module")
def tiny_model(tiny_out_dir):
    from nanophi.checkpoint import load_model
    model, _ = load_model("resume", tiny_out_dir)
    # the tiny checkpoint's random init has near-uniform logits; sharpen them so that the argmax is a
    # real decision a format could get wrong, as in a trained model
    with torch.no_grad():
        model.transformer.wte.weight.mul_(20)
    return model


def test_resolve_weights_checks_before_loading():
    assert resolve_weights("fp32", "cpu") == "fp32"
    assert resolve_weights("int8", "cpu") == "int8"
    assert resolve_weights("auto", "cpu", "float32") == "fp32"
    assert resolve_weights("auto", "cpu", "bfloat16") == ("bf16" if cpu_has_bf16() else "fp32")
    with pytest.raises(ValueError, match="weights must be one of auto, fp32, bf16, int8; got 'fp16'"):
        resolve_weights("fp16", "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_weights("int8", "cuda")
    if BF16_OK:
        assert resolve_weights("bf16", "cpu") == "bf16"
    else:
        with pytest.raises(ValueError, match="no native bf16"):
            resolve_weights("bf16", "cpu")


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_logits_close_to_fp32(tiny_model, fmt):
    torch.manual_seed(0)
    x = torch.randint(0, 50257, (2, 48))
    y = torch.randint(0, 50257, (2, 48))
    model = apply_weights(copy.deepcopy(tiny_model), fmt)
    with torch.no_grad():
        want, got = tiny_model(x)[0], model(x)[0]
        loss_want, loss_got = tiny_model(x, y)[1].item(), model(x, y)[1].item()
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = (got - want).abs().max() / want.abs().max()
    assert 0 < err < 0.03, err  # changed (really converted), but only by rounding
    assert abs(loss_got - loss_want) < 0.02 * loss_want
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9
    assert weight_bytes_per_token(model) < weight_bytes_per_token(tiny_model) / (1.9 if fmt == "bf16" else 3.5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_generates_with_the_kv_cache(tiny_model, fmt):
    model = apply_weights(copy.deepcopy(tiny_model), fmt)
    x = torch.tensor([[464, 2068, 7586, 21831]])
    row = Row(x[0].tolist(), 24, temperature=0, stop_ids=())
    list(Engine(model, max_batch=1).run([row]))
    fast = torch.tensor([row.seen])
    slow = model.generate(x, 24, temperature=0)
    assert torch.equal(fast, slow)  # the engine's cache path and the full forward agree within one format
    base = tiny_model.generate(x, 24, temperature=0)
    assert (fast[0, 4:] == base[0, 4:]).float().mean() > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["fp32", "auto"] + FORMATS)
def test_sample_runs_with_each_format(tiny_out_dir, fmt):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), f"--out_dir={tiny_out_dir}", f"--weights={fmt}",
                        "--start=Hello", "--max_new_tokens=12", "--temperature=0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 0
    assert f"{resolve_weights(fmt, 'cpu')} weights" in r.stderr


@pytest.mark.slow
def test_sample_rejects_unknown_format(tiny_out_dir):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), f"--out_dir={tiny_out_dir}", "--weights=fp8"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert "weights must be one of auto, fp32, bf16, int8; got 'fp8'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("pack", ["plain", "packed"])  # what this machine's probe answered, both ways
@pytest.mark.parametrize("fbgemm", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 8, WIDE_ROWS + 3])
def test_bf16_linear_close_to_fp32(rows, fbgemm, pack, monkeypatch):
    monkeypatch.setattr(weights, "_fp16_ok", None if fbgemm else False)  # False: as where torch has no fbgemm
    monkeypatch.setattr(gemv, "bf16_pack_choice", lambda: (pack, {"choice": pack}))
    torch.manual_seed(rows)
    linear = torch.nn.Linear(96, 200)
    x = torch.randn(1, rows, 96)
    layer = BF16Linear(linear)
    with torch.no_grad():
        got, want = layer(x), linear(x)
        rounded = torch.nn.functional.linear(x, linear.weight.bfloat16().float(), linear.bias.bfloat16().float()
                                             if layer.native else linear.bias)
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert 0 < err < 0.02, err  # the weights really are bf16, and only rounded
    if layer.fp16 is not None:  # without native bf16: fbgemm's fp16 GEMM holds the bf16 values (exact in fp16)
        assert fbgemm and not layer.native and layer.weight is None and layer.gemv is None
        torch.testing.assert_close(got, rounded, rtol=1e-5, atol=1e-5)
    # batch-1 decoding takes the kernel; without native bf16, batched decoding too (oneDNN's bf16 is emulated)
    elif layer.gemv is not None and rows <= (SMALL_ROWS if layer.native else WIDE_ROWS):
        assert torch.equal(got, layer.gemv(x, layer.weight, layer.bias_fp32))
    elif layer.rows is not None and rows <= NATIVE_ROWS:  # native bf16, batched decoding: the rows kernel
        assert torch.equal(got, layer.rows(x, layer.weight, layer.bias_fp32))
    elif not layer.native:  # prefill: fp32 BLAS on the weight widened, the same values
        torch.testing.assert_close(got, rounded, rtol=1e-5, atol=1e-5)
    assert layer.fp16 is None or weights.fp16_packing()
    assert (layer.rows is not None) == (layer.native and layer.gemv is not None)
    # a second, oneDNN-packed copy only where the probe found it worth its memory (or no kernel runs)
    assert layer.packed == (layer.native and can_pack("cpu") and (layer.rows is None or pack == "packed"))


def test_bf16_lm_head_keeps_its_plain_weight_for_the_tied_embedding(tiny_model):
    model = apply_weights(copy.deepcopy(tiny_model), "bf16")
    head = model.lm_head
    assert head.fp16 is None and head.weight.dtype == torch.bfloat16  # the table TiedEmbedding reads
    blocks = [m for m in model.modules() if isinstance(m, BF16Linear) and m is not head]
    assert all((m.fp16 is not None) == (weights.fp16_packing() and not m.native) for m in blocks)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], tiny_model(ids)[0], rtol=0.05, atol=0.05)


def test_quantize_rows_is_symmetric_per_row():
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.0, -2.9]])
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert q[0].tolist() == [64, -127, 32] and q[1].tolist() == [0, 0, 0] and q[2, 0] == 127
    torch.testing.assert_close(scale[[0, 2]], torch.tensor([1 / 127, 3 / 127]))
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()  # rounded, not truncated


@pytest.mark.parametrize("rows,bias", [(1, True), (2, False), (2, True), (8, True), (12, False)])
def test_int8_linear_close_to_fp32(rows, bias):
    torch.manual_seed(rows)
    linear = torch.nn.Linear(100, 203, bias=bias)  # neither a multiple of 16
    x = torch.randn(1, rows, 100)
    layer = Int8Linear(linear)
    with torch.no_grad():
        got, want = layer(x), linear(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert 0 < err < 0.03, err  # the weights really are int8, and only rounded
    kernel = rows <= INT8_GEMV_ROWS and not (layer.packed_from and rows >= layer.packed_from)
    if layer.gemv is not None and kernel:  # decoding: fp32 activations, the dequantized weight
        deq = layer.weight.double() * layer.scale.double()[:, None]
        ref = torch.nn.functional.linear(x.double(), deq, None if layer.bias is None else layer.bias.double())
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    elif layer.gemv is not None:  # more rows (prefill; batched steps where gemv.int8_packed_from says): fbgemm's op
        assert layer.gemv(x, layer.weight, layer.scale, layer.bias).sub(got).abs().max() < 0.02 * want.abs().max()


def decode_logits(model, ids):
    """The logits of each step of batch-1 decoding, one token at a time through a KV cache."""
    cache = KVCache(model.config, 1, len(ids), "cpu", torch.float32)
    out = []
    with torch.no_grad():
        for t in ids:
            out.append(model(torch.tensor([[t]]), cache=cache, slots=[0], last_only=True)[0][0, -1])
    return torch.stack(out)


def test_int8_decoding_close_to_fp32_and_closer_than_dynamic_quantization(tiny_model):
    model = apply_weights(copy.deepcopy(tiny_model), "int8")
    assert all(isinstance(m, Int8Linear) for m in (model.lm_head, model.transformer.h[0].mlp.c_fc))
    ids = [464, 2068, 7586, 21831, 625, 262, 16931, 3290, 13, 198, 464, 3797]
    want, got = decode_logits(tiny_model, ids), decode_logits(model, ids)
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert 0 < err < 0.03, err
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9
    if model.lm_head.gemv is not None:  # fp32 activations: nearer fp32 than quantize_dynamic's 7-bit ones
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dyn = torch.ao.quantization.quantize_dynamic(copy.deepcopy(tiny_model), {torch.nn.Linear}, dtype=torch.qint8)
        dyn_err = ((decode_logits(dyn, ids) - want).abs().max() / want.abs().max()).item()
        assert err < dyn_err, (err, dyn_err)


@pytest.mark.slow
def test_linear_layers_without_the_kernels():
    """NANOPHI_GEMV=0 (read when a kernel is first asked for) forces the fallbacks, as where they cannot build:
    oneDNN for bf16, fbgemm for int8, the oneDNN-packed copy for batched fp32."""
    code = ("import torch; from nanophi import weights; from nanophi.weights import BF16Linear; torch.manual_seed(0); "
            "weights._fp16_ok = False; "  # the kernel's fallback, as where torch has no fbgemm
            "lin = torch.nn.Linear(64, 48); layer = BF16Linear(lin); x = torch.randn(1, 64); "
            "err = ((layer(x) - lin(x)).abs().max() / lin(x).abs().max()).item(); "
            "print(layer.gemv is None, 0 < err < 0.02, layer(torch.randn(2, 3, 64)).shape); "
            "from nanophi.weights import FP32Linear, Int8Linear; q, f = Int8Linear(lin), FP32Linear(lin, 8); "
            "x = torch.randn(8, 64); err = ((q(x[:1]) - lin(x[:1])).abs().max() / lin(x[:1]).abs().max()).item(); "
            "print(q.gemv is None, 0 < err < 0.03, f.gemv is None and f.packed is not None, "
            "bool(torch.allclose(f(x), lin(x), atol=1e-5)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "NANOPHI_GEMV": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "torch.Size([2,", "3,", "48])", "True", "True", "True", "True"]
    assert "bf16 gemv kernel unavailable (NANOPHI_GEMV=0)" in r.stderr
    assert "int8 gemv kernel unavailable (NANOPHI_GEMV=0)" in r.stderr


def test_fp32_for_batches_equals_plain(tiny_model):
    model = apply_weights(copy.deepcopy(tiny_model), "fp32", batch=8)
    layers = [m for m in model.modules() if isinstance(m, FP32Linear)]
    assert len(layers) == 4 * tiny_model.config.n_layer + 1
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied, the same Parameter
    assert model.state_dict().keys() == tiny_model.state_dict().keys()
    assert weight_bytes_per_token(model) == weight_bytes_per_token(tiny_model)
    assert all(m.packed is None for m in layers) or layers[0].gemv is None  # the second copy only as the fallback
    torch.manual_seed(0)
    for shape in [(1, 1), (1, 2), (3, 1), (8, 1), (2, 37)]:  # the kernel up to 16 rows, F.linear above
        x = torch.randint(0, 50257, shape)
        with torch.no_grad():
            want, got = tiny_model(x)[0], model(x)[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    layer = layers[0]
    x = torch.randn(8, layer.in_features, requires_grad=True)
    layer(x).sum().backward()  # with gradients on, the plain weight (the kernels have no autograd)
    assert layer.weight.grad is not None
    # 1-2 rows: the plain layer, unless the kernel beat BLAS at one row on this machine (the next test)
    small = apply_weights(copy.deepcopy(tiny_model), "fp32", batch=2).lm_head.__class__
    assert small is (FP32Linear if gemv.fp32_rows_choice()[0] == "gemv" else torch.nn.Linear)


@pytest.mark.parametrize("fmt", ["fp32", "int8", "bf16"])
def test_decoding_rows_do_not_depend_on_the_rows_beside_them(fmt, monkeypatch):
    """A row's output from the fp32 / int8 kernels (bf16 without native bf16 or fbgemm) is the same bit for bit
    alone or among 7 others."""
    monkeypatch.setattr(weights, "_fp16_ok", False)  # bf16: the rows kernel, not fbgemm's fp16 GEMM
    monkeypatch.setitem(gemv._state, "int8_packed_from", 0)  # int8: the kernel at 1-8 rows, not fbgemm's copy
    torch.manual_seed(1)
    linear = torch.nn.Linear(200, 77)
    layer = {"fp32": FP32Linear(linear, 8), "int8": Int8Linear(linear), "bf16": BF16Linear(linear, 8)}[fmt]
    if layer.gemv is None:
        pytest.skip("no gemv kernel on this machine")
    # native bf16: 1-2 rows take the pair kernel, 3-8 the rows kernel (the Decoder the rows kernel at every count)
    alone = not (fmt == "bf16" and layer.native)
    x = torch.randn(8, 200)
    with torch.no_grad():
        together = layer(x)
        if alone:
            for i in range(8):
                assert torch.equal(layer(x[i:i + 1]), together[i:i + 1])
        assert torch.equal(layer(x[2:5]), together[2:5])


def test_bf16_prefill_copy_follows_the_measured_choice(tmp_path):
    """gemv.bf16_pack_choice times a 512-row chunk through oneDNN's packed copy and the plain weight, once
    per machine (cached): 'plain' (no second copy) unless the packed one is more than 15% faster."""
    choice, entry = gemv.bf16_pack_choice(cache_dir=str(tmp_path))
    assert choice in ("packed", "plain") and entry["cached"] is False
    if "packed_ms" in entry:
        assert (choice == "plain") == (entry["plain_ms"] <= 1.15 * entry["packed_ms"])
    again = gemv.bf16_pack_choice(cache_dir=str(tmp_path))[1]
    assert again["cached"] is True and again.get("packed_ms") == entry.get("packed_ms")  # measured once


def test_int8_batched_steps_follow_the_measured_choice(tmp_path):
    """gemv.int8_packed_from times the int8 kernel against fbgemm's copy at 2, 4 and 8 rows, once per
    machine (cached): the first row count where fbgemm wins by 5%, or 0 (the kernel up to 8 rows)."""
    start = gemv.int8_packed_from(cache_dir=str(tmp_path))
    if gemv.int8_kernel() is None:
        assert start == 0
        return
    entry = json.load(open(tmp_path / gemv.INT8_ROWS_FILE))
    times = next(iter(entry.values()))["ms_kernel_fbgemm"]
    wins = [int(r) for r, (kern, fb) in times.items() if fb * 1.05 < kern]
    assert start == (min(wins) if wins else 0) and set(times) == {"2", "4", "8"}
    assert gemv.int8_packed_from(cache_dir=str(tmp_path)) == start
    assert json.load(open(tmp_path / gemv.INT8_ROWS_FILE)) == entry  # cached: not measured again


def test_fp32_batch_one_follows_the_measured_choice(tiny_model, tmp_path):
    """gemv.fp32_rows_choice times the kernel against BLAS at one row, once per machine (cached); apply_weights
    puts batch-1 fp32 on the kernel only where it won here, and the numbers stay fp32's."""
    choice, entry = gemv.fp32_rows_choice(cache_dir=str(tmp_path))
    assert choice in ("gemv", "blas")
    if gemv.fp32_kernel() is None:
        assert choice == "blas" and "no kernel" in entry["why"]
    else:
        assert entry["cached"] is False and (choice == "gemv") == (entry["gemv_ms"] < entry["blas_ms"])
        again = gemv.fp32_rows_choice(cache_dir=str(tmp_path))[1]
        assert again["cached"] is True and again["gemv_ms"] == entry["gemv_ms"]  # measured once
        assert "1 row: kernel" in gemv.describe_choice(entry)
    model = apply_weights(copy.deepcopy(tiny_model), "fp32")  # the user's cache: what sample.py does here
    on_kernel = isinstance(model.lm_head, FP32Linear)
    assert on_kernel == (gemv.fp32_rows_choice()[0] == "gemv")
    if on_kernel:
        assert model.lm_head.packed is None and model.lm_head.weight is model.transformer.wte.weight
    ids = [464, 2068, 7586, 21831, 625, 262]
    torch.testing.assert_close(decode_logits(model, ids), decode_logits(tiny_model, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tied_embedding_reads_the_converted_head(tiny_model, fmt):
    """On a CPU the token embedding of a converted model reads lm_head's bf16/int8 weight: no fp32 table beside it."""
    from nanophi.weights import TiedEmbedding
    model = apply_weights(copy.deepcopy(tiny_model), fmt)
    emb = model.transformer.wte
    assert isinstance(emb, TiedEmbedding) and emb.head[0] is model.lm_head
    assert not any(p.dtype == torch.float32 and p.shape == tiny_model.lm_head.weight.shape for p in model.parameters())
    idx = torch.tensor([[0, 5, 50256, 17]])
    want, got = tiny_model.transformer.wte(idx), emb(idx)
    assert got.dtype == torch.float32 and got.shape == want.shape
    if fmt == "int8":  # exactly the dequantized rows (the head's scale is per token)
        torch.testing.assert_close(got, model.lm_head.weight[idx].float() * model.lm_head.scale[idx, None])
    assert ((got - want).abs().max() / want.abs().max()).item() < 0.01
    assert weight_bytes_per_token(model) < weight_bytes_per_token(tiny_model)


def rss_mb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self")
def test_release_pages_gives_back_a_mapped_checkpoint_and_nothing_else(tmp_path):
    from nanophi.weights import _file_mappings, release_pages
    path = str(tmp_path / "big.pt")
    torch.save({"a": torch.ones(16 << 20), "b": torch.full((1000,), 3.0)}, path)  # 64 MB + a neighbour
    sd = torch.load(path, mmap=True, weights_only=True)
    anon = torch.ones(4 << 20)
    assert sd["a"].sum().item() == 16 << 20  # every page read in
    before = rss_mb()
    release_pages(anon, _file_mappings())  # not a file mapping: untouched
    release_pages(sd["a"], _file_mappings())
    assert before - rss_mb() > 48, (before, rss_mb())
    assert anon.sum().item() == 4 << 20 and torch.equal(sd["b"], torch.full((1000,), 3.0))
    assert sd["a"][:10].tolist() == [1.0] * 10  # read again, from the file


def test_converted_from_a_mapped_checkpoint_equals_converted_from_memory(tiny_out_dir):
    """load_for_inference maps the checkpoint and gives back the fp32 pages while converting: the result is
    the same model as converting a copy held in ordinary memory."""
    from nanophi.checkpoint import load_for_inference, load_model
    ids = torch.tensor([[464, 2068, 7586, 21831, 625, 262, 16931]])
    for fmt in FORMATS:
        mapped = load_for_inference("resume", tiny_out_dir, weights=fmt, dtype="float32").model
        plain = apply_weights(copy.deepcopy(load_model("resume", tiny_out_dir)[0]), fmt)
        with torch.no_grad():
            assert torch.equal(mapped(ids)[0], plain(ids)[0]), fmt


def test_int8_head_keeps_no_prefill_copy_and_still_takes_many_rows(tiny_model):
    """lm_head gets one position per row in generation: no fbgemm copy (52 MB at GPT-2's size); a loss over
    many positions goes through the kernel instead, with the same numbers as the dequantized weight."""
    model = apply_weights(copy.deepcopy(tiny_model), "int8")
    head = model.lm_head
    if head.gemv is None:
        pytest.skip("no int8 kernel here: the head keeps fbgemm's copy")
    assert head.packed is None and model.transformer.h[0].mlp.c_fc.packed is not None
    x = torch.randn(2, 40, head.in_features)
    with torch.no_grad():
        want = F.linear(x, head.weight.float() * head.scale[:, None])
        torch.testing.assert_close(head(x), want, rtol=1e-4, atol=1e-4)
        ids = torch.randint(0, 50257, (2, 40))
        _, loss = model(ids, targets=ids)
        _, ref = tiny_model(ids, targets=ids)
    assert abs(loss.item() - ref.item()) < 0.05 * ref.item()


def test_bf16_widening_reuses_one_scratch_buffer(monkeypatch):
    """Prefill on a CPU without native bf16 widens each weight into one reused fp32 buffer per thread."""
    from nanophi import weights
    a, b = torch.randn(30, 20).bfloat16(), torch.randn(7, 11).bfloat16()
    wa = weights._widened(a)
    assert torch.equal(wa, a.float())
    wb = weights._widened(b)  # smaller: the same memory, refilled
    assert torch.equal(wb, b.float()) and wb.data_ptr() == wa.data_ptr()
    monkeypatch.setattr(weights, "SCRATCH_MAX", 100)
    big = weights._widened(a)  # over the limit: a fresh copy, the scratch untouched
    assert torch.equal(big, a.float()) and big.data_ptr() != wa.data_ptr() and torch.equal(wb, b.float())


def test_inference_gelu_is_model_pys_gelu_in_place(tiny_model):
    """apply_weights puts the extension's tanh GELU in the MLPs on a CPU: the same values as F.gelu (to
    float rounding), in place without gradients, F.gelu itself with them."""
    if gemv.gelu_kernel() is None:
        pytest.skip(f"no extension here ({gemv.unavailable()})")
    model = apply_weights(copy.deepcopy(tiny_model), "fp32")
    gelus = [b.mlp.gelu for b in model.transformer.h]
    assert all(isinstance(g, weights.InferenceGELU) for g in gelus)
    x = torch.randn(2, 37, 301) * 4  # not a multiple of the vector width: the scalar tail too
    want = F.gelu(x, approximate="tanh")
    with torch.no_grad():
        y = x.clone()
        assert gelus[0](y) is y
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
        half = x.bfloat16()  # not fp32: F.gelu, untouched input
        torch.testing.assert_close(gelus[0](half), F.gelu(half, approximate="tanh"))
    g = x.clone().requires_grad_()
    out = gelus[0](g)
    out.sum().backward()  # with gradients: F.gelu, so autograd works and the input is not overwritten
    assert torch.equal(g.detach(), x) and g.grad is not None
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], tiny_model(ids)[0], rtol=1e-4, atol=1e-4)
