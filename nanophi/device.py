"""
Device and precision selection, and each device's peak FLOP/s for MFU: one definition for
training, sampling, serving, evaluation and the benchmarks.

dtype='auto': bf16 on CUDA capability >= 8.0 (Ampere+), fp16 (with a GradScaler in training) on
older GPUs such as the T4 (sm_75). torch.cuda.is_bf16_supported() is not trusted: it can say
True on a T4, where bf16 is only emulated and slow. On a CPU, training's 'auto' takes the precision
whose matmuls are faster on this very CPU (probe_cpu_dtype: measured once, cached per machine);
sampling, serving and evaluation stay fp32 there (batch-1 decoding is bandwidth-bound, and autocast
re-casts every weight per call).
"""
import contextlib
import json
import os
import shutil
import sys
import time

import torch

# dense peak tensor-core FLOP/s at the precision the device trains in (vendor figures)
PEAK_FLOPS = [  # (substring of torch.cuda.get_device_name, bf16/fp16 peak)
    ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("A800", 312e12), ("A6000", 155e12), ("A40", 150e12), ("A10G", 70e12),
    ("A10", 125e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("4090", 165e12), ("3090", 71e12), ("V100", 125e12), ("T4", 65e12), ("P100", 18.7e12),
]


def pick_device(device="auto"):
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    check_device(device)
    return device


def check_device(device):
    """A named device this torch cannot use is a ValueError saying why (torch's own is an AssertionError
    from deep inside the first .to())."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA (a CPU-only wheel)" if torch.version.cuda is None
                   else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES?)")
            raise ValueError(f"device={device!r}: {why}; use device=cpu or auto")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0 .. "
                             f"cuda:{torch.cuda.device_count() - 1})")
    if device == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ValueError("device='mps': this machine or torch build has no MPS (Apple GPU); use device=cpu or auto")


def cpu_has_bf16():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(device_type, capability=None):
    """bf16 on CUDA sm80+, fp16 on older CUDA (T4 = sm75: never trust is_bf16_supported()), else fp32."""
    if device_type == "cuda":
        return "bfloat16" if capability[0] >= 8 else "float16"
    return "float32"


def cpu_model_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


# bf16 must beat fp32 by this much on the probe: a training step also pays autocast's casts and an
# fp32 optimizer, so a small matmul edge does not survive (measured here: matmul 3.0x -> step 1.8x)
BF16_MIN_SPEEDUP = 1.3
PROBE_FILE = "dtype_probe.json"


def cached_probe(filename, measure, valid, cache_dir=None):
    """A measurement of this machine, made once: measure() -> a dict entry, kept in
    <cache_dir>/<filename> (JSON, written atomically) under this CPU's name, thread count and torch
    version; valid(entry) says whether a cached entry can be trusted. Returns the entry with
    cached/path/key added. Used by probe_cpu_dtype and nanophi/gemv.py's kernel choice."""
    from nanophi.files import atomic_file
    from nanophi.tokenizer import CACHE_DIR
    path = os.path.join(cache_dir or CACHE_DIR, filename)
    key = f"{cpu_model_name()} | {torch.get_num_threads()} threads | torch {torch.__version__}"
    try:
        cache = json.load(open(path))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}  # none yet, or unreadable: measure again and rewrite it
    entry = cache.get(key)
    if isinstance(entry, dict) and valid(entry):
        return dict(entry, cached=True, path=path, key=key)
    entry = dict(measure(), measured=time.strftime("%Y-%m-%d %H:%M:%S"))
    cache[key] = entry
    try:
        with atomic_file(path) as tmp:
            with open(tmp, "w") as f:
                json.dump(cache, f, indent=1)
    except OSError as e:  # a read-only home still runs; it measures again next time
        print(f"{filename}: not cached ({e})", file=sys.stderr)
    return dict(entry, cached=False, path=path, key=key)


def probe_cpu_dtype(cache_dir=None, n=1024, repeats=3):
    """Training's dtype='auto' on a CPU: 'bfloat16' where bf16 matmuls are faster than fp32 by
    BF16_MIN_SPEEDUP here, else 'float32'. Same-shape matmuls timed in both precisions (~0.2 s), the
    result kept in <cache_dir>/dtype_probe.json (cached_probe), since one vendor's CPU is 3x faster in
    bf16 and another's 2x slower. Returns (dtype, entry)."""
    def measure(n=n):
        # measured whatever /proc/cpuinfo says: a VM may hide avx512_bf16 that the CPU still runs
        # a 256 screen first: emulated bf16 runs ~50x slower and would make the full probe take half a minute
        fp32 = measure_matmul_flops("float32", n=256, repeats=repeats)
        bf16 = measure_matmul_flops("bfloat16", n=256, repeats=repeats)
        if bf16 >= fp32:
            fp32 = measure_matmul_flops("float32", n=n, repeats=repeats)
            bf16 = measure_matmul_flops("bfloat16", n=n, repeats=repeats)
        else:
            n = 256
        return {"dtype": "bfloat16" if bf16 >= BF16_MIN_SPEEDUP * fp32 else "float32",
                "fp32_gflops": round(fp32 / 1e9, 1), "bf16_gflops": round(bf16 / 1e9, 1),
                "why": f"{n}x{n} matmul, bf16 {bf16 / fp32:.2f}x fp32, bf16 needs {BF16_MIN_SPEEDUP}x"}
    entry = cached_probe(PROBE_FILE, measure, lambda e: e.get("dtype") in ("float32", "bfloat16"), cache_dir)
    return entry["dtype"], entry


def cache_note(entry):
    """How a cached_probe entry came to be, for a log line: measured now, or when and where it was cached."""
    if entry["cached"]:
        return f"cached {entry.get('measured', '')} in {entry['path']}, delete it to re-measure"
    return f"measured now, cached in {entry['path']}"


def describe_probe(entry):
    """One line for the training log: what auto chose on this CPU and the figures behind it."""
    return (f"dtype auto on this CPU: {entry['dtype']} (matmul fp32 {entry['fp32_gflops']:.0f} GFLOP/s, "
            f"bf16 {entry['bf16_gflops']:.0f} GFLOP/s; {entry['why']}; {cache_note(entry)})")


def pick_dtype(dtype="auto", device="cpu", training=False):
    """Resolve 'auto' | 'float32' | 'bfloat16' | 'float16' to a name, checking it can work. On a CPU,
    training=True makes 'auto' the probed fastest precision (probe_cpu_dtype), printed with its figures."""
    dev = torch.device(device).type
    if dtype == "auto":
        if dev == "cpu" and training:
            chosen, entry = probe_cpu_dtype()
            print(describe_probe(entry), flush=True)
            return chosen
        return auto_dtype(dev, torch.cuda.get_device_capability(device) if dev == "cuda" else None)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if dev == "cuda" and dtype == "bfloat16" and torch.cuda.get_device_capability()[0] < 8:
        raise ValueError(f"dtype=bfloat16 on {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}) "
                         "is emulated and slow; use dtype=float16 (or auto)")
    if dev == "cpu" and dtype == "float16":
        raise ValueError("dtype=float16: float16 autocast does not run on a CPU; use float32 or bfloat16 (or auto)")
    return dtype


def autocast(device, dtype):
    """Mixed-precision context; a no-op for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, dtype))


# torch.compile's warm-up on a 2-core CPU (tens of seconds) is repaid by ~25% faster steps after a
# few hundred steps of a small GPT (bench/bench_train.py --compile=True); shorter runs stay eager
CPU_COMPILE_MIN_ITERS = 1000


def compile_by_default(device_type, max_iters):
    """train.py's compile=None: on with CUDA on Linux; on a Linux CPU when the run is long enough to
    repay the warm-up and a C++ compiler (inductor's CPU backend builds C++) is installed."""
    if not sys.platform.startswith("linux"):
        return False
    if device_type == "cuda":
        return True
    has_cxx = any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++"))
    return device_type == "cpu" and max_iters >= CPU_COMPILE_MIN_ITERS and has_cxx


def peak_flops_by_name(name):
    """Peak FLOP/s for a GPU name such as 'Tesla T4' or 'NVIDIA A100-SXM4-40GB', else None."""
    for key, flops in PEAK_FLOPS:  # ordered so that 'A10G' is tried before 'A10', 'L40' before 'L4'
        if key in name:
            return flops
    return None


def peak_flops(device):
    """Peak FLOP/s of the device, or None when unknown (then report achieved FLOP/s only)."""
    if torch.device(device).type != "cuda":
        return None
    return peak_flops_by_name(torch.cuda.get_device_name(torch.device(device)))


def device_name(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    if torch.device(device).type == "cpu":
        import platform
        return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return str(device)


# ---------------------------------------------------------------------------------------------
# this machine's limits, measured (the benchmarks print their figures beside them)

def _best_seconds(fn, repeats):
    fn()  # first call allocates and picks kernels
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_matmul_flops(dtype="float32", n=2048, repeats=3, device="cpu"):
    """FLOP/s of an n x n matmul in dtype: the compute ceiling training and prefill can reach."""
    a = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    b = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    return 2 * n ** 3 / _best_seconds(lambda: (a @ b, sync()), repeats)


def measure_copy_bandwidth(nbytes=256 << 20, repeats=3, device="cpu"):
    """Bytes/s moved by copying a tensor far bigger than the caches (each byte read once and written
    once, both counted): the ceiling of batch-1 generation, which reads every weight per token."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    return 2 * nbytes / _best_seconds(lambda: (dst.copy_(src), sync()), repeats)
