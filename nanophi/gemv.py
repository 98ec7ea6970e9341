"""
Matrix-vector kernels for decoding on CPU, fp32 activations, one extension:
  gemv_bf16 (csrc/gemv_bf16.cpp): bf16 weights; weights.py's BF16Linear uses it for 1-2 rows of x.
  gemv_int8 (csrc/gemv_rows.cpp): int8 weights with an fp32 scale per output row; Int8Linear, up to 8
            rows (49 Linear shapes of GPT-2 124M at 1 row: 5.2 ms against fp32 MKL's 17.3 and
            quantize_dynamic's fbgemm op 6.3, 2026-12-03, load ~2).
  gemv_fp32 (csrc/gemv_rows.cpp): fp32 weights; FP32Linear, batched decoding up to 16 rows (8 rows:
            21 ms against MKL's 48 and a oneDNN-packed copy's 28), no second copy of the weights.
gemv_rows.cpp reads the weight once for up to 8 rows of x and sums each row in one order whatever
the number of rows, so a decoding row's numbers do not depend on the rows sharing its step.

Why: batch-1 decoding reads every weight once per token, so halving the bytes should nearly double
the speed, but no PyTorch kernel reads bf16 weights at memory speed at M=1 (measured on a 2-core
Sapphire Rapids Xeon, torch 2.13, the 49 Linear shapes of GPT-2 124M in sequence: fp32 F.linear
18-22 ms; oneDNN prepacked bf16 1.22-1.49x faster; plain bf16 F.linear 0.92x; torch.mv 0.58x;
torch.compile of a widened product 1.15x). Generation was 1.27x fp32 against a 2x ideal. The weight
is widened to fp32 by a 16-bit shift inside the dot products, so activations stay fp32.

The loops are written once over a vector type (csrc/simd.h) and built for the widest instruction set
this CPU runs, AVX-512F (16 lanes) or AVX2+FMA (8), as torch itself dispatches at run time. Built
once with torch.utils.cpp_extension (setup.sh does it; cached under TORCH_EXTENSIONS_DIR, default
~/.cache/torch_extensions, per source version: other clones with the same sources reuse it). Where it
cannot be built or run (no compiler, not x86-64 with AVX-512 or AVX2, Windows) or NANOPHI_GEMV=0 is
set, kernel(), int8_kernel() and fp32_kernel() return None
after a one-line warning each: BF16Linear keeps oneDNN's path, Int8Linear fbgemm's dynamic op at
every size, FP32Linear a oneDNN-packed second copy for batches.
"""
import os
import platform
import sys
import warnings

import torch

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
# one extension: the three gemv ops, and decode.cpp's Decoder (nanophi/decode.py), which calls them
SOURCES = [os.path.join(CSRC, f) for f in ("gemv_bf16.cpp", "gemv_rows.cpp", "decode.cpp")]
_state = {}  # "built": None once built, else why not


# the instruction sets the kernels are built for (csrc/simd.h), best first: torch's own run-time
# choice for this CPU (ATEN_CPU_CAPABILITY=avx2 forces the narrower one) -> the compiler flags
ISA_FLAGS = {"AVX512": ["-mavx512f"], "AVX2": ["-mavx2", "-mfma", "-mf16c"]}  # F16C: the fp16 KV cache


def isa():
    """The instruction set the kernels use on this CPU ('AVX512', 'AVX2'), or None."""
    cap = torch.backends.cpu.get_cpu_capability()
    return cap if cap in ISA_FLAGS else None


def _stable_sources():
    """csrc/ copied (once, atomically) under torch's extensions root at a folder named by its contents' hash."""
    import hashlib
    import shutil
    from torch.utils.cpp_extension import get_default_build_root
    names = sorted(f for f in os.listdir(CSRC) if f.endswith((".cpp", ".h")))
    h = hashlib.sha256()
    for f in names:
        h.update(f.encode() + b"\0" + open(os.path.join(CSRC, f), "rb").read() + b"\0")
    digest = h.hexdigest()[:12]
    src = os.path.join(get_default_build_root(), f"nanophi_src_{digest}")
    if not os.path.isdir(src):
        tmp = f"{src}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for f in names:
            shutil.copy2(os.path.join(CSRC, f), tmp)
        try:
            os.rename(tmp, src)
        except OSError:  # another process made it first: the same contents
            shutil.rmtree(tmp, ignore_errors=True)
    return src, digest


def _build():
    """None once the ops are loaded, or the reason they are not available."""
    if os.environ.get("NANOPHI_GEMV", "1") == "0":
        return "NANOPHI_GEMV=0"
    if sys.platform == "win32" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs x86-64 Linux or macOS, not {sys.platform} {platform.machine()}"
    name = isa()
    if name is None:
        return f"this CPU has neither AVX-512 nor AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    from torch.utils.cpp_extension import load
    try:
        # one build per instruction set and source version, from a copy of the sources at a path named by
        # their hash: a second clone of the repository (Colab's, the notebook test's) finds the same build
        # instead of recompiling (~25 s on 2 cores), and a cache shared between machines never runs the
        # wrong one; at::parallel_for is a header template: built without OpenMP it would run on one
        # thread (libgomp.so.1 then resolves to the copy torch has already loaded, one thread pool)
        src, digest = _stable_sources()
        load(f"nanophi_gemv_{name.lower()}_{digest}", [os.path.join(src, os.path.basename(f)) for f in SOURCES],
             extra_cflags=["-O3", "-fopenmp"] + ISA_FLAGS[name], extra_ldflags=["-fopenmp"],
             extra_include_paths=[src], is_python_module=False, verbose=False)
    except Exception as e:  # no compiler, no ninja, a failed build: the reason in one line
        return f"build failed ({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''})"
    if not torch.ops.nanophi.gemv_cpu_ok():
        return f"this CPU does not run the {name} build"
    return None


def _op(name):
    if "built" not in _state:
        _state["built"] = _build()
    return None if _state["built"] else getattr(torch.ops.nanophi, name)


def _kernel(name, fallback):
    op = _op(name)
    if op is None and not _state.get("warned " + name):
        _state["warned " + name] = True
        warnings.warn(f"{name.split('_')[1]} gemv kernel unavailable ({_state['built']}); {fallback}", stacklevel=3)
    return op


def unavailable():
    """Why the kernels are not available (building them if not yet tried), or None."""
    _op("gemv_cpu_ok")
    return _state["built"]


def kernel():
    """torch.ops.nanophi.gemv_bf16(x, w, bias) -> x @ w.T + bias in fp32 (x: (..., K) any float dtype,
    w: (N, K) contiguous bf16, bias: (N,) or None), or None where unavailable (warned once)."""
    return _kernel("gemv_bf16", "bf16 weights use oneDNN at batch 1 (slower)")


def int8_kernel():
    """torch.ops.nanophi.gemv_int8(x, w, scale, bias) -> (x @ w.T) * scale + bias in fp32 (x: (..., K) any
    float dtype, w: (N, K) contiguous int8, scale and bias: (N,), bias may be None), or None where
    unavailable (warned once)."""
    return _kernel("gemv_int8", "int8 weights use PyTorch's dynamic quantization at every batch size "
                                "(slower at batch 1, activations quantized)")


def bf16_rows_kernel():
    """torch.ops.nanophi.gemv_bf16_rows(x, w, bias): as kernel(), one pass over w for up to 8 rows of x
    (kernel() makes one per 2), for CPUs without native bf16, where oneDNN's bf16 is emulated; or None
    (warned once)."""
    return _kernel("gemv_bf16_rows", "bf16 weights are widened to fp32 for BLAS at every size (slower at batch 1)")


def fp32_kernel():
    """torch.ops.nanophi.gemv_fp32(x, w, bias) -> x @ w.T + bias (w: (N, K) contiguous fp32), or None
    where unavailable (warned once)."""
    return _kernel("gemv_fp32", "batched fp32 decoding uses a second copy of the weights packed by oneDNN")


def gelu_kernel():
    """torch.ops.nanophi.gelu_tanh_(x): model.py's tanh GELU in place (x contiguous fp32 on CPU), the
    Decoder's vectorised one, or None where the extension is unavailable."""
    return _op("gelu_tanh_")


PROBE_FILE = "gemv_probe.json"


def fp32_rows_choice(cache_dir=None):
    """Which path decodes one fp32 row faster on this machine, measured once and cached per machine
    (device.cached_probe: gemv_probe.json): 'gemv' (gemv_fp32) or 'blas' (F.linear, MKL). Timed on
    eight 768x3072 weights (75 MB, past any last-level cache, as decoding's 500 MB are), best of 5
    (~0.3 s). The answer differs by CPU: on a 2-core Sapphire Rapids Xeon the two were equal (17.6 vs
    17.3 ms for GPT-2 124M's layers), on a 2-core AMD EPYC with AVX2 the kernel took 23.8 ms against
    MKL's 41.9. Returns (choice, entry); 'blas' without measuring where the kernel is unavailable."""
    op = fp32_kernel()
    if op is None:
        return "blas", {"choice": "blas", "why": f"no kernel ({_state['built']})", "cached": False}
    from torch.nn import functional as F
    from nanophi.device import _best_seconds, cached_probe

    def measure():
        ws = [torch.rand(3072, 768) - 0.5 for _ in range(8)]
        x = torch.rand(1, 768) - 0.5
        with torch.no_grad():
            blas = _best_seconds(lambda: [F.linear(x, w) for w in ws], 5)
            kern = _best_seconds(lambda: [op(x, w, None) for w in ws], 5)
        return {"choice": "gemv" if kern < blas else "blas", "gemv_ms": round(kern * 1e3, 2),
                "blas_ms": round(blas * 1e3, 2), "why": "1 row x eight 768x3072 fp32 weights, best of 5"}
    entry = cached_probe(PROBE_FILE, measure, lambda e: e.get("choice") in ("gemv", "blas"), cache_dir)
    return entry["choice"], entry


BF16_PACK_FILE = "bf16_pack_probe.json"


def bf16_pack_choice(cache_dir=None):
    """On a CPU with native bf16: whether the blocks' Linear layers keep a second copy of their bf16
    weights prepacked by oneDNN for prefill ('packed'), or prefill reads the plain weight the kernels
    read ('plain': oneDNN repacks it inside each call; half the weight memory, 170 MB at GPT-2 124M).
    Measured once per machine and cached (device.cached_probe): a 512-token prefill chunk through a
    768x3072 weight both ways, best of 5 (~0.1 s); 'plain' where it is within 15% of the packed copy. On
    a 2-core AMD EPYC with avx512_bf16, GPT-2 124M's blocks: 256 rows 143-160 ms packed, 147-157 plain;
    one 768x3072 weight at 512 rows 5.9 against 6.5. A CPU whose bf16 matmul is much faster than the
    repacking (AMX) keeps the packed copy."""
    if cache_dir is None and "bf16_pack" in _state:  # asked once per layer: read the file once per process
        return _state["bf16_pack"]
    from torch.nn import functional as F
    from nanophi.device import _best_seconds, cached_probe

    def measure():
        w = (torch.rand(3072, 768) - 0.5).bfloat16()
        x = (torch.rand(512, 768) - 0.5).bfloat16()
        try:
            pw = torch.ops.mkldnn._reorder_linear_weight(w, 512)
        except RuntimeError as e:  # oneDNN cannot pack bf16 here: nothing to keep
            return {"choice": "plain", "why": f"oneDNN cannot pack bf16 here ({str(e).splitlines()[0][:80]})"}
        with torch.no_grad():
            packed = _best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, pw, None, "none", [], ""), 5)
            plain = _best_seconds(lambda: F.linear(x, w), 5)
        return {"choice": "plain" if plain <= 1.15 * packed else "packed", "packed_ms": round(packed * 1e3, 3),
                "plain_ms": round(plain * 1e3, 3), "why": "512 rows x a 768x3072 bf16 weight, best of 5"}
    entry = cached_probe(BF16_PACK_FILE, measure, lambda e: e.get("choice") in ("packed", "plain"), cache_dir)
    if not entry["cached"] and "packed_ms" in entry:  # the first run on this machine says what it measured
        print(f"bf16 prefill: {entry['choice']} weight (512 rows: oneDNN's packed copy {entry['packed_ms']} ms, the "
              f"plain weight {entry['plain_ms']} ms; {BF16_PACK_FILE})", file=sys.stderr)
    if cache_dir is None:
        _state["bf16_pack"] = entry["choice"], entry
    return entry["choice"], entry


INT8_ROWS_FILE = "int8_rows_probe.json"


def int8_packed_from(cache_dir=None):
    """From how many rows (2, 4 or 8; 0: never, up to the 8 the kernel takes) batched int8 decoding is
    faster through fbgemm's packed copy (which prefill keeps anyway) than through gemv_int8. Measured once
    per machine and cached (device.cached_probe): 2, 4 and 8 rows through 24 int8 768x3072 weights (57 MB,
    past the last-level cache, as decoding's are) both ways, best of 3 (~0.7 s); fbgemm must win by 5%.
    On a 2-core AMD EPYC with avx512_vnni, GPT-2 124M's blocks: 1 row kernel 2.6-2.9 ms, fbgemm 4.3-4.5;
    4 rows 4.8-4.9 against 4.1-4.9; 8 rows 8.7-8.9 against 4.5-4.9. fbgemm quantizes a step's activations
    with one scale for all its rows, so from there a row's numbers depend on the rows beside it."""
    if int8_kernel() is None:
        return 0
    if cache_dir is None and "int8_packed_from" in _state:
        return _state["int8_packed_from"]
    import warnings
    from nanophi.device import _best_seconds, cached_probe
    op = int8_kernel()

    def measure():
        torch.manual_seed(0)
        qs = [torch.randint(-127, 128, (3072, 768), dtype=torch.int8) for _ in range(24)]
        scale = torch.full((3072,), 0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            packs = [torch.ops.quantized.linear_prepack(torch._make_per_channel_quantized_tensor(
                q, scale.double(), torch.zeros(3072, dtype=torch.long), 0), None) for q in qs]
        times, start = {}, 0
        with torch.no_grad():
            for rows in (2, 4, 8):
                x = torch.rand(rows, 768) - 0.5
                kern = _best_seconds(lambda: [op(x, q, scale, None) for q in qs], 3)
                fb = _best_seconds(lambda: [torch.ops.quantized.linear_dynamic(x, p, True) for p in packs], 3)
                times[rows] = [round(kern * 1e3, 2), round(fb * 1e3, 2)]
                if not start and fb * 1.05 < kern:
                    start = rows
        return {"packed_from": start, "ms_kernel_fbgemm": times, "why": "24 int8 768x3072 weights, best of 3"}
    entry = cached_probe(INT8_ROWS_FILE, measure, lambda e: e.get("packed_from") in (0, 2, 4, 8), cache_dir)
    if cache_dir is None:
        _state["int8_packed_from"] = entry["packed_from"]
    return entry["packed_from"]


def describe_choice(entry):
    """One line for a log: the fp32 batch-1 path and the figures behind it."""
    if "gemv_ms" not in entry:
        return f"fp32 decoding: BLAS ({entry['why']})"
    from nanophi.device import cache_note
    return (f"fp32 decoding: {'gemv kernel' if entry['choice'] == 'gemv' else 'BLAS'} (1 row: kernel "
            f"{entry['gemv_ms']} ms, BLAS {entry['blas_ms']} ms; {cache_note(entry)})")


if __name__ == "__main__":  # setup.sh: build now, so the first request does not pay the compile
    print(f"setup: bf16, int8 and fp32 gemv kernels {'built' if kernel() is not None else 'unavailable (see the warning)'}")
    if kernel() is not None:  # and the per-machine choices, measured once now rather than at a first load
        print("setup: " + describe_choice(fp32_rows_choice()[1]))
        start = int8_packed_from()
        print(f"setup: int8 batched decoding: {f'fbgemm from {start} rows' if start else 'the kernel up to 8 rows'} "
              f"({INT8_ROWS_FILE})")
        from nanophi.device import cpu_has_bf16
        if cpu_has_bf16():  # without native bf16 the choice is not asked (fbgemm's fp16 holds the weights)
            print(f"setup: bf16 prefill: {bf16_pack_choice()[0]} weight ({BF16_PACK_FILE})")
