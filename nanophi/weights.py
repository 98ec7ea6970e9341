"""
Weight formats for generation and evaluation, applied to a loaded model: one definition for
sample.py, serve.py, eval.py and the benchmarks.

  fp32  as trained.
  bf16  the Linear layers' weights in bfloat16 (half the bytes each generated token reads),
        activations, LayerNorm, attention and the residual stream stay in the model's dtype.
        On CUDA the whole model is cast. On a CPU with native bf16 (avx512_bf16 / amx) 1-2 rows go
        through nanophi/gemv.py's kernel, more through oneDNN (BF16Linear); on one without (AVX2),
        the blocks' weights are held by fbgemm's fp16 GEMM (the bf16 values, exact in fp16) at every
        row count, lm_head by the kernel (it widens bf16 to fp32 by a shift); where torch has no
        fbgemm, the kernel up to 64 rows and prefill through fp32 BLAS on the weight widened per call.
  int8  the Linear layers' weights in int8, symmetric per output channel (one fp32 scale per row),
        CPU only (Int8Linear). 1-2 rows go through nanophi/gemv.py's int8 kernel with fp32
        activations (a quarter of fp32's bytes per token); more rows (prefill, batched decoding)
        through PyTorch's dynamic quantization op on a packed copy of the same int8 values (fbgemm:
        activations quantized on the fly, per tensor); lm_head, fed one position per row, has no such
        copy. Without the kernel: that op at every size.
  auto  bf16 on a CPU when dtype resolves to bfloat16 (autocast would otherwise recast every fp32
        weight at every token); fp32 otherwise, i.e. the dtype setting alone decides as before.

Batched decoding (serve.py: up to max_batch rows per step) asks apply_weights for `batch` rows: on a
CPU the fp32 Linear layers then take nanophi/gemv.py's fp32 kernel up to 16 rows (FP32Linear); at
batch 1 too where the kernel beats this machine's BLAS at one row (gemv.fp32_rows_choice, measured
once per machine: MKL at one row is 1.8x slower than the kernel on an AMD EPYC, equal on a Xeon). MKL's
sgemm at 4-8 rows is 2-3x slower than at one row here; the kernel reads the plain weight once for 8
rows. (Before: a second copy of the weights prepacked by oneDNN, +476 MB at GPT-2 124M, still the
fallback where the kernel does not build.)

Batch-1 generation on a CPU is bound by reading the weights, so fewer bytes per weight is speed.
bench/bench_generate.py measures the speed and the quality cost (validation loss, greedy agreement).
"""
import sys
import threading
import warnings

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanophi import gemv
from nanophi.device import cpu_has_bf16

WEIGHTS = ("auto", "fp32", "bf16", "int8")


def resolve_weights(weights, device, dtype="float32"):
    """The format name for this device and dtype; a ValueError before any model is loaded."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    dev = torch.device(device).type
    if weights == "auto":
        return "bf16" if dev == "cpu" and dtype == "bfloat16" and cpu_has_bf16() else "fp32"
    if weights == "int8" and dev != "cpu":
        raise ValueError(f"weights=int8 (PyTorch's dynamic quantization) runs on CPU only, not {dev}; "
                         "use weights=bf16 or fp32")
    if weights == "bf16" and dev == "cpu" and not cpu_has_bf16() and gemv.kernel() is None:
        raise ValueError("weights=bf16: this CPU has no native bf16 (avx512_bf16/amx) and the gemv kernel that "
                         f"widens bf16 to fp32 is unavailable ({gemv.unavailable()}); use weights=int8 or fp32")
    if weights == "bf16" and dev == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        raise ValueError(f"weights=bf16 on {torch.cuda.get_device_name(device)} is emulated and slow; use fp32 "
                         "(with dtype=float16 autocast)")
    return weights


SMALL_ROWS = 2  # up to this many rows of x bf16 takes the gemv kernel (oneDNN is faster from 4)
# up to this many rows the fp32 and int8 kernels beat MKL / fbgemm (GPT-2 small's Linear layers: at 16 rows
# the fp32 kernel is 37 ms against MKL's 47, int8's 20 against fbgemm's 13)
FP32_GEMV_ROWS, INT8_GEMV_ROWS = 16, 8
# bf16 without native bf16 (AVX2): the rows kernel up to this many rows, then widen + fp32 BLAS (2-core AMD
# EPYC, GPT-2 small's layers: 64 rows 171-213 ms against 305 widened, 8 rows 20-23 against 213; at 512 rows
# BLAS's 150 GFLOP/s win)
WIDE_ROWS = 64
# bf16 with native bf16: the rows kernel from 3 rows up to this many (2-core AMD EPYC with avx512_bf16, GPT-2
# small's blocks: 3-4 rows 6.3-7.7 ms against oneDNN's packed copy's 8.8-11.2, 8 rows 11.9-12.6 against
# 10.8-12.7, 16 rows 19-23 against plain oneDNN's 17-20)
NATIVE_ROWS = 8


def can_pack(device):
    return torch.device(device).type == "cpu" and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") \
        and torch.backends.mkldnn.is_available()


class FP32Linear(nn.Module):
    """An fp32 nn.Linear for batched generation on a CPU, where MKL's sgemm at 4-8 rows takes 2-3x its
    1-row time. Up to FP32_GEMV_ROWS rows go through nanophi/gemv.py's fp32 kernel, which streams the
    plain weight once for up to 8 rows (GPT-2 small's 49 Linear layers in a row: 17.6 ms at 1 row, 21 at
    8, against MKL's 17.3 and 48 and the oneDNN copy prepacked for 8 rows 23 and 28) and sums every row
    in the same order however many share the call; more rows (prefill) go through F.linear. Without
    the kernel: 1-2 rows read the plain weight, more a second copy prepacked by oneDNN for `batch`."""

    def __init__(self, linear, batch):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: state_dict and tying unchanged
        self.gemv = gemv.fp32_kernel() if linear.weight.device.type == "cpu" else None
        self.packed = None
        if self.gemv is None and can_pack(linear.weight.device):  # the fallback: a second copy of the weights
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch)

    def forward(self, x):
        if torch.is_grad_enabled():  # the kernels have no autograd
            return F.linear(x, self.weight, self.bias)
        if self.gemv is not None and x.numel() <= FP32_GEMV_ROWS * self.in_features:
            return self.gemv(x, self.weight, self.bias)
        if self.packed is None or x.numel() <= SMALL_ROWS * self.in_features:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, gemv={self.gemv is not None}, "
                f"packed={self.packed is not None}")


_scratch = threading.local()
SCRATCH_MAX = 16 << 20  # values: a block's largest weight widened (GPT-2 124M: 2.4M), not a 50K-row head


def _widened(weight):
    """A bf16 weight widened to fp32 in a buffer this thread reuses (it stays in the last-level cache
    between layers); a weight larger than SCRATCH_MAX gets a fresh copy."""
    n = weight.numel()
    if n > SCRATCH_MAX:
        return weight.float()
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < n:
        buf = _scratch.buf = torch.empty(n)
    return buf[:n].view(weight.shape).copy_(weight)


_fp16_ok = None


def fp16_packing():
    """Whether this torch has fbgemm's fp16 GEMM (torch.ops.quantized.linear_prepack_fp16), checked once."""
    global _fp16_ok
    if _fp16_ok is None:
        try:
            p = torch.ops.quantized.linear_prepack_fp16(torch.ones(8, 8), None)
            _fp16_ok = bool(torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 8), p).eq(8).all())
        except (RuntimeError, AttributeError, NotImplementedError):  # a build without fbgemm (e.g. ARM)
            _fp16_ok = False
    return _fp16_ok


class BF16Linear(nn.Module):
    """An nn.Linear's weights in bf16 for inference. On a CPU with native bf16, 1-2 rows of x (batch-1
    decoding) go through nanophi/gemv.py's kernel, which streams the plain bf16 weight at memory speed
    with fp32 activations, 3 to NATIVE_ROWS (batched decoding) through its rows kernel, one pass over
    the weight; more (prefill) through oneDNN on the same plain weight, which oneDNN repacks inside each
    call. Only where that repacking costs more than 15% of a prefill chunk (gemv.bf16_pack_choice,
    measured per machine) is a second copy kept, prepacked once into oneDNN's blocked layout.

    On a CPU without (AVX2) the bf16 values are held, instead of the plain weight, by fbgemm's fp16 GEMM
    (packed once, 2 bytes a weight as before, widened in registers with F16C): a bf16 value in fp16's
    normal range is exact in fp16, so the numbers are the bf16 weights'. It is as fast as the kernel at
    one row and 1.3-1.7x faster at 4-64 (2-core AMD EPYC, GPT-2 small's shapes), and at 256-512 rows
    (prefill) 117-137 GFLOP/s against 89-114 for fp32 BLAS on the weight widened per call."""

    def __init__(self, linear, batch=1, spans=(), prefill=True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # plain attributes, not Parameters: an opaque oneDNN tensor has no place in a state_dict
        self.weight = convert_rows(linear.weight, torch.bfloat16, spans)
        self.rows = None  # with native bf16: the rows kernel for 3..NATIVE_ROWS rows
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        on_cpu = self.weight.device.type == "cpu"
        self.bias_fp32 = None if linear.bias is None else linear.bias.detach().float()
        self.native = not on_cpu or cpu_has_bf16()
        # prefill=False (lm_head, which generation feeds one position per row): the plain weight (the tied
        # token embedding reads it) and the kernel, no packed copy for many rows
        self.fp16 = None
        if on_cpu and not self.native and prefill and fp16_packing():
            self.fp16 = torch.ops.quantized.linear_prepack_fp16(self.weight.float(), self.bias_fp32)
            self.weight = None
            _trim_heap()  # the freed bf16 and fp32 copies sit between packed weights: give them back now, or
            # the load's peak holds them all (GPT-2 124M from a checkpoint: 735 MB against 550)
        # without native bf16 and fbgemm, oneDNN's bf16 is emulated (~1 GFLOP/s): the rows kernel takes up
        # to WIDE_ROWS rows (one pass over the weight for up to 8 rows, 4 on AVX2, and one summing order for
        # every row count: a row's numbers do not depend on the rows beside it), more widen the weight to
        # fp32 per call
        self.gemv = None if not on_cpu or self.fp16 is not None else \
            gemv.kernel() if self.native else gemv.bf16_rows_kernel()
        if on_cpu and self.native and self.gemv is not None:
            self.rows = gemv.bf16_rows_kernel()
        # the oneDNN-packed second copy for prefill only where this machine's probe found it faster than
        # the plain weight by more than 15% (gemv.bf16_pack_choice), or where no kernel runs
        self.packed, self.packed_weight = prefill and can_pack(linear.weight.device) and self.native, None
        if self.packed and self.rows is not None:
            self.packed = gemv.bf16_pack_choice()[0] == "packed"
        if self.packed:
            try:
                self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(self.weight, batch)
            except RuntimeError:  # oneDNN's bf16 path needs avx512bw/vl/dq or avx_ne_convert: plain bf16 matmul
                self.packed = False

    def forward(self, x):
        if self.fp16 is not None:
            return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.fp16).to(x.dtype)
        rows = SMALL_ROWS if self.native else WIDE_ROWS  # with native bf16, the rows kernel from 3 rows
        if self.gemv is not None and x.numel() <= rows * self.in_features:
            return self.gemv(x, self.weight, self.bias_fp32).to(x.dtype)
        if self.rows is not None and x.numel() <= NATIVE_ROWS * self.in_features:
            return self.rows(x, self.weight, self.bias_fp32).to(x.dtype)
        if not self.native:  # widened into this thread's scratch: no fresh 9 MB (c_fc) to fault in per call
            return F.linear(x.float(), _widened(self.weight), self.bias_fp32).to(x.dtype)
        xb = x.to(torch.bfloat16)
        if self.packed:
            y = torch.ops.mkldnn._linear_pointwise(xb, self.packed_weight, self.bias, "none", [], "")
        else:
            y = F.linear(xb, self.weight, self.bias)
        return y.to(x.dtype)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, gemv={self.gemv is not None}, "
                f"rows={self.rows is not None}, packed={self.packed}, fp16={self.fp16 is not None}")


CHUNK_ROWS = 4096  # rows converted at a time: the fp32 temporaries stay small (GPT-2's lm_head whole: 154 MB each)


def convert_rows(weight, dtype, spans=()):
    """weight in dtype, converted CHUNK_ROWS rows at a time; the pages of each chunk read from a
    memory-mapped checkpoint are given back as it is done (release_pages), so the fp32 original and
    its conversion are never both whole in memory (GPT-2 124M loaded in bf16: peak 687 -> 552 MB)."""
    w = weight.detach()
    out = torch.empty(w.shape, dtype=dtype, device=w.device)
    for i in range(0, w.shape[0], CHUNK_ROWS):
        out[i:i + CHUNK_ROWS] = w[i:i + CHUNK_ROWS]
        release_pages(w[i:i + CHUNK_ROWS], spans)
    return out


def quantize_rows(weight, chunk=CHUNK_ROWS, spans=()):
    """int8 values and an fp32 scale per output row, symmetric: weight ~= q * scale[:, None]. In chunks
    of rows (the fp32 temporaries stay small), each chunk's checkpoint pages given back when done."""
    w = weight.detach()
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scale = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    for i in range(0, w.shape[0], chunk):
        part = w[i:i + chunk].float()
        s = (part.abs().amax(dim=1) / 127).clamp(min=1e-12)  # an all-zero row: any scale gives zeros
        q[i:i + chunk] = torch.round(part / s[:, None]).clamp(-127, 127)
        scale[i:i + chunk] = s
        release_pages(w[i:i + chunk], spans)
    return q, scale


class Int8Linear(nn.Module):
    """An nn.Linear's weights in int8 per output channel for CPU inference. Up to INT8_GEMV_ROWS rows of
    x (decoding, batched up to 8) go through nanophi/gemv.py's int8 kernel: fp32 activations, the plain
    int8 weight read at memory speed once for all rows (GPT-2 small's 49 Linear layers: 5.2 ms at 1 row,
    10.5 at 8, against fbgemm's 6.3 and 10.7). More rows (prefill) go through
    torch.ops.quantized.linear_dynamic on a copy of the same int8 values packed by fbgemm (what
    quantize_dynamic runs: activations quantized per tensor, 13 ms at 16 rows against the kernel's 20),
    and so do batched steps from packed_from rows where that copy is faster there (a CPU with VNNI: 8
    rows 4.5 ms against the kernel's 8.9; gemv.int8_packed_from measures it once per machine).
    The plain copy is kept only where the kernel runs."""

    def __init__(self, linear, spans=(), prefill=True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight, spans=spans)
        self.gemv = gemv.int8_kernel() if q.device.type == "cpu" else None
        self.scale = scale
        self.bias = None if linear.bias is None else linear.bias.detach().float().contiguous()
        self.packed = None
        # prefill=False (lm_head: generation feeds it one position per row) with the kernel: no fbgemm
        # copy (+52 MB at GPT-2's 50K x 768); the rare many-row call (a loss) takes the kernel, slower
        if prefill or self.gemv is None:
            with warnings.catch_warnings():  # quantized tensors announce their move to torchao; they still work
                warnings.simplefilter("ignore")
                qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
                self.packed = torch.ops.quantized.linear_prepack(qw, self.bias)
        self.weight = q if self.gemv is not None else None
        # from this many rows (measured once per machine; 0: never) batched decoding takes fbgemm's copy
        self.packed_from = gemv.int8_packed_from() if self.gemv is not None and self.packed is not None else 0
        _trim_heap()  # the quantizing temporaries, freed between layers: give them back now, or the load's
        # peak holds them all (GPT-2 124M from a checkpoint: 657 MB against 468 at the end)

    def forward(self, x):
        if self.gemv is not None and (x.numel() <= INT8_GEMV_ROWS * self.in_features or self.packed is None):
            if not self.packed_from or x.numel() < self.packed_from * self.in_features:
                return self.gemv(x, self.weight, self.scale, self.bias).to(x.dtype)
        # reduce_range: fbgemm's activations use 7 bits so their int16 sums cannot overflow
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, True).to(x.dtype)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, gemv={self.gemv is not None}, "
                f"packed_from={self.packed_from}")


class TiedEmbedding(nn.Module):
    """GPT-2's token embedding read from the converted lm_head it is tied to (bf16, or int8 with its
    per-row scale, which is per token here), so the fp32 table (154 MB at 124M) is not kept beside it."""

    def __init__(self, head):
        super().__init__()
        self.head = [head]  # a list: not a submodule, so the layer is not listed (or converted) twice
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features

    def forward(self, idx):
        head = self.head[0]
        rows = F.embedding(idx, head.weight).float()
        return rows * head.scale[idx].unsqueeze(-1) if isinstance(head, Int8Linear) else rows

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, from {type(self.head[0]).__name__}"


class InferenceGELU(nn.Module):
    """model.py's tanh GELU for CPU inference: in place through the extension's vectorised one (the
    Decoder's), as ATen's tanh took 6% of a 512-token bf16 prefill on a 2-core EPYC (GELU free: +10%);
    with gradients on, or on anything but a contiguous fp32 tensor, F.gelu as before."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x):
        if torch.is_grad_enabled() or x.dtype != torch.float32 or not x.is_contiguous() or x.device.type != "cpu":
            return F.gelu(x, approximate="tanh")
        self.op(x)  # the c_fc output it is given is read by nothing else
        return x


def _fast_gelu(model):
    """Put InferenceGELU in place of each tanh nn.GELU of a CPU model (where the extension built)."""
    op = gemv.gelu_kernel()
    if op is None:
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.GELU and child.approximate == "tanh":
                setattr(parent, name, InferenceGELU(op))
    return model


def _file_mappings():
    """(start, end) of this process's file-backed memory mappings (Linux), e.g. a checkpoint loaded with mmap."""
    spans = []
    try:
        for line in open("/proc/self/maps"):
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                start, end = (int(a, 16) for a in fields[0].split("-"))
                spans.append((start, end))
    except OSError:
        pass
    return spans


def release_pages(tensor, spans):
    """Give back the resident pages of a tensor that lives in a memory-mapped checkpoint and that nothing
    reads any more (a converted Linear's fp32 weight): without this they stay in the process's memory
    (peak and steady) for as long as any other tensor of the file is alive. Only whole pages inside the
    tensor, only where the memory is a file mapping; a re-read would fetch them again from the file."""
    if tensor is None or tensor.device.type != "cpu" or sys.platform != "linux":
        return
    start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size()
    if not any(a <= start and end <= b for a, b in spans):
        return
    import ctypes
    import mmap
    page = mmap.PAGESIZE
    lo, hi = (start + page - 1) // page * page, end // page * page
    if hi > lo:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED


def _replace_linears(module, make, spans=(), keep=()):
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child))
            if not any(child.weight is k for k in keep):
                release_pages(child.weight, spans)
        else:
            _replace_linears(child, make, spans, keep)


def _trim_heap():
    """Hand the C heap's free memory back to the system (glibc): the conversion's freed temporaries
    otherwise stay in the process (int8 at 124M: 150 MB resident after loading)."""
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _convert_on_cpu(model, make):
    """Convert every Linear (make(linear, spans, prefill): prefill=False for lm_head, which generation feeds
    one position per row); the tied token embedding then reads lm_head's converted weight, and the fp32
    pages of a memory-mapped checkpoint are given back chunk by chunk as each layer is converted."""
    spans = _file_mappings()
    wte = model.transformer.wte
    tied = model.lm_head.weight is wte.weight
    head = model.lm_head
    _replace_linears(model, lambda linear: make(linear, spans, linear is not head), spans, keep=(wte.weight,))
    if tied and getattr(model.lm_head, "weight", None) is not None:
        model.transformer.wte = TiedEmbedding(model.lm_head)
        release_pages(wte.weight, spans)
    _trim_heap()
    return model


@torch.no_grad()
def apply_weights(model, weights, batch=1):
    """Put a loaded model (eval mode, on its device) into a resolved format (resolve_weights), in
    place; returns it. The result is for inference only. GPT-2 ties lm_head to wte: on a CPU the
    token embedding then reads the converted lm_head (TiedEmbedding), so no fp32 table is kept; fp32
    pages of a memory-mapped checkpoint are given back as each layer is converted. batch: the
    most rows one decoding step feeds (serve.py's max_batch); above 2 on a CPU, fp32 Linear layers
    take the fp32 gemv kernel (FP32Linear) and bf16 ones are packed for it. On a CPU the MLPs' tanh GELU
    runs in place through the extension (InferenceGELU)."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        _fast_gelu(model)
    if weights == "fp32":
        if device.type != "cpu":
            return model
        # batch 1 too where the kernel beats this machine's BLAS at one row (measured once, cached)
        choice, entry = gemv.fp32_rows_choice()
        if not entry["cached"] and "gemv_ms" in entry:  # the first run on this machine says what it measured
            print(gemv.describe_choice(entry), file=sys.stderr)
        if batch > SMALL_ROWS and can_pack(device) or choice == "gemv":
            _replace_linears(model, lambda linear: FP32Linear(linear, batch))
        return model
    if weights == "bf16" and device.type != "cpu":
        return model.to(torch.bfloat16)
    if weights == "bf16":
        return _convert_on_cpu(model, lambda linear, spans, prefill: BF16Linear(linear, batch, spans, prefill))
    if weights == "int8":
        return _convert_on_cpu(model, Int8Linear)
    raise ValueError(f"apply_weights: unresolved weights {weights!r} (call resolve_weights first)")


def weight_bytes_per_token(model):
    """Bytes of weights one generated token reads at batch 1: every Linear (lm_head included) and
    one row of each embedding; the KV cache is counted apart (it grows with the context)."""
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, FP32Linear)):  # FP32Linear reads one of its copies
            total += m.weight.numel() * m.weight.element_size() + (m.bias.numel() * m.bias.element_size() if m.bias is not None else 0)
        elif isinstance(m, BF16Linear):
            bias = m.bias_fp32 if m.gemv is not None else m.bias  # what a batch-1 token reads
            total += m.in_features * m.out_features * 2 + (bias.numel() * bias.element_size() if bias is not None else 0)
        elif isinstance(m, Int8Linear):  # int8 values + an fp32 scale per row (+ bias)
            total += m.in_features * m.out_features + m.out_features * 4 * (1 + (m.bias is not None))
        elif isinstance(m, torch.ao.nn.quantized.dynamic.Linear):  # quantize_dynamic's (bench_generate's baseline)
            w = m.weight()
            total += w.numel() * w.element_size() + m.out_features * 4 * 2  # int8 + per-channel scale/zero point
            total += m.out_features * 4 if m.bias() is not None else 0
        elif isinstance(m, nn.LayerNorm) or type(m).__name__ == "LayerNorm":
            total += sum(p.numel() * p.element_size() for p in m.parameters())
        elif isinstance(m, nn.Embedding):
            total += m.weight.size(1) * m.weight.element_size()
        elif isinstance(m, TiedEmbedding):  # one row of the head's weight (+ its scale)
            total += m.embedding_dim * m.head[0].weight.element_size() + 4 * isinstance(m.head[0], Int8Linear)
    return total
