"""
The whole decoding step in one C++ call on CPU (csrc/decode.cpp's Decoder): the engine's rows that
each feed one new token go through it instead of model.forward, where the model is one it knows.

Why: at batch 1 on a 2-core CPU the Linear layers (the gemv kernels) are most of a token, and the
rest, ~25 small ATen ops per block and the Python around them, was 3.5-4 ms of GPT-2 124M's
22-26 ms fp32 token (docs/benchmarks.md). The Decoder reads the same weights and the engine's KV
cache, and runs the same arithmetic as model.py's Block with its own vectorised LayerNorm, GELU and
one-query attention. Its numbers differ from model.forward's only by float rounding (tests check
the logits and the greedy text), and a row's numbers never depend on the rows beside it.

Used when: the model is on CPU in eval mode with fp32 activations, every Linear is one this file knows
(nn.Linear, weights.py's FP32Linear, BF16Linear with its kernel or fbgemm's fp16 GEMM, which the Decoder
calls through torch's packed-weight object, or Int8Linear with its kernel and, from packed_from rows,
fbgemm's copy), the gemv extension is built, the cache is fp32 or fp16, and the step has at most max_rows rows (the most the Linear kernels take
before BLAS, fbgemm or oneDNN are faster). NANOPHI_DECODER=0 turns it off (for side-by-side benches).
Anything else (CUDA, LoRA layers, training, prefill chunks) runs model.forward as before.
"""
import os

import torch
from torch import nn

from nanophi import gemv
from nanophi.weights import FP32_GEMV_ROWS, INT8_GEMV_ROWS, NATIVE_ROWS, SMALL_ROWS, WIDE_ROWS, BF16Linear, \
    FP32Linear, Int8Linear, TiedEmbedding

KINDS = {"fp32": 0, "int8": 1, "bf16": 2, "blas": 3, "fp16_packed": 4}  # csrc/decode.cpp's Kind
NONE = torch.empty(0)  # "no tensor here" in the Decoder's list


class Decoder:
    """A model's decoding step for up to max_rows rows: step(ids, slots, positions, k, v) -> logits (B, vocab)."""

    def __init__(self, op, max_rows):
        self.op, self.max_rows = op, max_rows

    def step(self, ids, slots, positions, k, v):
        return self.op.step(torch.tensor(ids, dtype=torch.long), slots, positions, k, v)


def _linear(m):
    """(kind, [weight, scale, bias], most rows, fbgemm's packed weight or None) of a Linear the Decoder
    reads, or None."""
    if isinstance(m, BF16Linear) and m.fp16 is not None:  # fbgemm's fp16 GEMM: any number of rows
        shape = torch.empty(m.out_features, m.in_features, device="meta")
        return "fp16_packed", [shape, NONE, NONE], 1 << 30, m.fp16
    if type(m) is nn.Linear and m.weight.dtype == torch.float32:
        return "blas", [m.weight.detach(), NONE, NONE if m.bias is None else m.bias.detach()], 1 << 30, None
    if isinstance(m, FP32Linear) and m.gemv is not None:
        return "fp32", [m.weight.detach(), NONE, NONE if m.bias is None else m.bias.detach()], FP32_GEMV_ROWS, None
    if isinstance(m, BF16Linear) and m.gemv is not None:
        # the Decoder's bf16 is the rows kernel at every row count: with native bf16, oneDNN is faster above
        # NATIVE_ROWS (or from 3 rows where this build has no rows kernel)
        rows = (NATIVE_ROWS if m.rows is not None else SMALL_ROWS) if m.native else WIDE_ROWS
        return "bf16", [m.weight, NONE, NONE if m.bias_fp32 is None else m.bias_fp32], rows, None
    if isinstance(m, Int8Linear) and m.gemv is not None:
        # fbgemm's copy too where batched steps take it from packed_from rows (gemv.int8_packed_from)
        return "int8", [m.weight, m.scale, NONE if m.bias is None else m.bias], INT8_GEMV_ROWS, \
            m.packed if m.packed_from else None
    return None


def _norm(m):
    if type(m).__name__ != "LayerNorm" or m.weight.dtype != torch.float32:
        return None
    return [m.weight.detach(), NONE if m.bias is None else m.bias.detach()]


def decoder(model):
    """The model's Decoder, or None where it does not apply (then the engine runs model.forward)."""
    if os.environ.get("NANOPHI_DECODER", "1") == "0" or model.training:
        return None
    tr = getattr(model, "transformer", None)
    if tr is None or next(model.parameters()).device.type != "cpu" or gemv.fp32_kernel() is None:
        return None
    try:
        make = torch.classes.nanophi.Decoder
    except (AttributeError, RuntimeError):  # an extension built before decode.cpp existed
        return None
    wte = tr.wte
    if isinstance(wte, TiedEmbedding):
        head = wte.head[0]
        table = [head.weight, head.scale if isinstance(head, Int8Linear) else NONE]
    elif type(wte) is nn.Embedding and wte.weight.dtype == torch.float32:
        table = [wte.weight.detach(), NONE]
    else:
        return None
    if tr.wpe.weight.dtype != torch.float32:
        return None
    tensors, kinds, packed, rows = table + [tr.wpe.weight.detach()], [], [], 1 << 30
    parts = []
    for block in tr.h:
        parts += [_norm(block.ln_1), _linear(block.attn.c_attn), _linear(block.attn.c_proj),
                  _norm(block.ln_2), _linear(block.mlp.c_fc), _linear(block.mlp.c_proj)]
    parts += [_norm(tr.ln_f), _linear(model.lm_head)]
    for p in parts:
        if p is None:
            return None
        if isinstance(p[0], str):  # a Linear
            kinds.append(KINDS[p[0]])
            packed.append(p[3])
            tensors += p[1]
            rows = min(rows, p[2])
        else:
            tensors += p
    int8_from = max((m.packed_from for m in model.modules() if isinstance(m, Int8Linear)), default=0)
    op = make(model.config.n_head, tensors, kinds, packed, 1e-5, int8_from)
    return Decoder(op, rows)
