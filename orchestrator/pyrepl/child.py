"""The sandboxed interpreter: the program a PyRepl sandbox runs (standard library only).

    python -I -B -u -X utf8 child.py '<config JSON>'

It is started by `orchestrator.pyrepl.sandbox` and talks to it in JSON lines, never
pickle: commands arrive on stdin, replies leave on the file descriptor `proto_fd`; the
code's own stdout and stderr are plain pipes the worker streams. Nothing the code sends is
trusted by the worker (it can write to these descriptors too).

Isolation (when the worker runs as root; `isolate="off"` or a refused `unshare` in
"preferred" mode runs the interpreter unisolated, and says so in its `ready` message):

    stage 0   unshare(mount, network, pid, ipc, uts namespaces), fork, wait, exit alike
    stage 1   pid 1 of the new namespace, still root: mounts private; `hide` directories
              covered by empty tmpfs (python's own prefix bound back in, read-only); the
              whole tree read-only; a fresh /proc; a private tmpfs on /tmp (the working
              directory, `tmp_bytes` big). Forks the interpreter, reaps, reports its end.
    stage 2   the interpreter: a dedicated uid (no groups, no_new_privs), rlimits
              (address space, processes, file size, open files, no core), then the REPL.

Each stage dies with its parent (PR_SET_PDEATHSIG), and when pid 1 of a namespace dies the
kernel kills everything left in it, so killing stage 0 stops every process of the sandbox.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import ctypes
import errno
import json
import linecache
import os
import queue
import resource
import signal
import sys
import threading
import time
import traceback
from types import FrameType
from typing import Any, NoReturn

PROTOCOL_VERSION = 1

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (a syscall after 5.1)
_MOUNT_ATTR_RDONLY = 1
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _send(fd: int, message: dict[str, Any]) -> None:
    data = (json.dumps(message, ensure_ascii=False, default=str) + "\n").encode()
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _fail(fd: int, message: str) -> NoReturn:
    with contextlib.suppress(OSError):
        _send(fd, {"type": "error", "message": message})
    os._exit(70)


def _die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# -- isolation -----------------------------------------------------------------------------


def _isolate(config: dict[str, Any]) -> dict[str, Any]:
    """Set the sandbox up; returns (in the interpreter process only) what it achieved."""
    fd = int(config["proto_fd"])
    if config["isolate"] == "off":
        return _unisolated(config, "isolation is turned off (isolate='off')")
    # One user per sandbox: stage 0's pid is unique among live processes, and so is this.
    uid = int(config["uid_base"]) + os.getpid()
    flags = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
    try:
        _check(_libc.unshare(flags), "unshare")
    except OSError as exc:
        if config["isolate"] == "required":
            _fail(fd, f"cannot create the sandbox's namespaces ({exc}): run the worker as root")
        return _unisolated(config, f"namespaces unavailable ({exc})")
    _forward_exit(os.fork(), report_to=None)  # stage 0 stays here
    _die_with_parent()
    try:
        _mounts(config, uid)
        _check(_libc.sethostname(b"sandbox", 7), "sethostname")
    except OSError as exc:
        _fail(fd, f"cannot set up the sandbox's file system ({exc})")
    _forward_exit(os.fork(), report_to=fd)  # stage 1 (pid 1) stays here
    _drop_privileges(uid)  # (its death signal is pid 1's end: the kernel kills the namespace)
    return {
        "mode": "isolated",
        "network": "none (own network namespace)",
        "filesystem": "read-only, except the private /tmp",
        "processes": "own pid namespace",
        "user": f"uid {uid}, no capabilities",
    }


def _unisolated(config: dict[str, Any], reason: str) -> dict[str, Any]:
    os.chdir(str(config["workdir"]))
    return {
        "mode": "none",
        "reason": reason,
        "network": "the worker's",
        "filesystem": "the worker's (working directory private, not enforced)",
        "processes": "the worker's",
        "user": "the worker's",
    }


def _forward_exit(child: int, *, report_to: int | None) -> None:
    """In the parent: wait for `child` (reaping any other process meanwhile: stage 1 is
    pid 1 of the namespace) and exit as it did. Returns in the child only."""
    if child == 0:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            os._exit(70)
        except InterruptedError:
            continue
        if pid != child:
            continue
        code = os.waitstatus_to_exitcode(status)
        if report_to is not None:
            with contextlib.suppress(OSError):
                # A newline first: the interpreter may have died halfway through a line.
                os.write(report_to, b"\n")
                _send(
                    report_to,
                    {
                        "type": "exit",
                        "code": code,
                        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
                    },
                )
        os._exit(code if code >= 0 else 128 - code)


def _mounts(config: dict[str, Any], uid: int) -> None:
    os.umask(0o022)
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing below propagates to the host
    hidden = [p for p in config["hide"] if os.path.isdir(p) and not os.path.islink(p)]
    exposed: dict[str, int] = {}
    for path in config["expose"]:
        if os.path.isdir(path) and any(_is_under(path, h) for h in hidden):
            exposed[path] = os.open(path, os.O_PATH | os.O_DIRECTORY)
    for path in hidden:
        _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=64k,mode=0755")
    for path, handle in exposed.items():
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{handle}", path, None, _MS_BIND | _MS_REC)
        os.close(handle)
    attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(
        _libc.syscall(
            _SYS_MOUNT_SETATTR,
            _AT_FDCWD,
            b"/",
            _AT_RECURSIVE,
            ctypes.byref(attr),
            ctypes.sizeof(attr),
        ),
        "mount_setattr (needs Linux 5.12+)",
    )
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        _MS_NOSUID | _MS_NODEV,
        f"size={int(config['tmp_bytes'])},nr_inodes=16384,mode=0700,uid={uid},gid={uid}",
    )


def _is_under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _drop_privileges(uid: int) -> None:
    os.chdir("/tmp")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    try:
        os.setuid(0)
    except PermissionError:
        return
    os._exit(71)  # privileges were not dropped: never run the code


def _apply_limits(config: dict[str, Any], isolated: bool) -> None:
    limits = config["limits"]
    pairs = [
        (resource.RLIMIT_AS, int(limits["memory_bytes"])),
        (resource.RLIMIT_FSIZE, int(limits["file_bytes"])),
        (resource.RLIMIT_NOFILE, int(limits["open_files"])),
        (resource.RLIMIT_CORE, 0),
    ]
    if isolated:
        # Counted per user: only meaningful for the sandbox's own uid.
        pairs.append((resource.RLIMIT_NPROC, int(limits["processes"])))
    for which, value in pairs:
        resource.setrlimit(which, (_capped(which, value), _capped(which, value)))
    # CPU: SIGXCPU at the soft limit (the code sees CpuTimeExceeded), SIGKILL 5 s later.
    lifetime = int(limits["lifetime_cpu_s"])
    resource.setrlimit(
        resource.RLIMIT_CPU,
        (_capped(resource.RLIMIT_CPU, lifetime), _capped(resource.RLIMIT_CPU, lifetime + 5)),
    )


def _capped(which: int, value: int) -> int:
    """`value`, or the hard limit already in place if that is lower (never raised)."""
    _, hard = resource.getrlimit(which)
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


# -- the REPL ------------------------------------------------------------------------------


class CpuTimeExceeded(BaseException):
    """The code used up its CPU time (raised from SIGXCPU)."""


class TurnSuspended(BaseException):
    """A runtime primitive suspended the turn (a gather waiting for forks)."""


class RuntimePrimitiveError(RuntimeError):
    """A runtime primitive failed on the worker."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type


_REMOTE_ERRORS: dict[str, type[Exception]] = {
    "KeyError": KeyError,
    "ValueError": ValueError,
    "IndexError": IndexError,
    "TypeError": TypeError,
}


class _Namespace:
    """`runtime.selfref.context.remember(...)`: a dotted primitive name, called over the pipe."""

    def __init__(self, repl: Repl, path: str) -> None:
        self._repl = repl
        self._path = path

    def __getattr__(self, name: str) -> _Namespace:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Namespace(self._repl, f"{self._path}.{name}" if self._path else name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._path:
            raise TypeError("runtime is not callable: call runtime.<namespace>.<name>(...)")
        return self._repl.call_primitive(self._path, list(args), kwargs)

    def __repr__(self) -> str:
        return f"<runtime primitive {self._path or 'namespace'}>"


class RuntimeProxy(_Namespace):
    """The `runtime` global: the agent's runtime primitives, performed by the worker."""

    def __init__(self, repl: Repl) -> None:
        super().__init__(repl, "")

    def list_primitives(self, prefix: str | None = None, *, contains: str | None = None) -> Any:
        """The names of the primitives `runtime` offers (filtered by prefix/substring)."""
        filters = {"prefix": prefix, "contains": contains}
        return self._repl.call_primitive(
            "runtime.list_primitives", [], {k: v for k, v in filters.items() if v is not None}
        )


def _no_input(prompt: object = "") -> str:
    raise RuntimeError("input() is not available in the sandbox: put the data in the code")


class Repl:
    """The interpreter's main loop: one command at a time, from the worker."""

    def __init__(self, config: dict[str, Any], isolation: dict[str, Any]) -> None:
        self.out_fd = int(config["proto_fd"])
        self.in_fd = os.dup(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.set_inheritable(self.out_fd, False)
        self.isolation = isolation
        self.isolated = isolation["mode"] == "isolated"
        self.max_repr = int(config.get("max_repr", 10_000))
        self.pid = os.getpid()
        self.main_thread = threading.get_ident()
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        self.proxy = RuntimeProxy(self)
        self.cell = 0
        self.current: str | None = None
        self.in_user_code = False
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.write_lock = threading.Lock()
        self.call_lock = threading.Lock()
        self.calls = 0
        signal.signal(signal.SIGINT, self._on_interrupt)
        signal.signal(signal.SIGXCPU, self._on_cpu)
        builtins.input = _no_input

    # -- wiring ------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        with self.write_lock:
            _send(self.out_fd, message)

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.in_user_code:
            raise KeyboardInterrupt

    def _on_cpu(self, signum: int, frame: FrameType | None) -> None:
        if self.in_user_code:
            raise CpuTimeExceeded

    def _read_commands(self) -> None:
        with open(self.in_fd, "rb", closefd=False) as stream:
            for line in stream:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                kind = message.get("type")
                if kind == "interrupt":
                    if self.current is not None and message.get("id") == self.current:
                        signal.pthread_kill(self.main_thread, signal.SIGINT)
                elif kind == "reply":
                    self.replies.put(message)
                else:
                    self.commands.put(message)
        os._exit(0)  # the worker closed the pipe (or is gone): nothing more to do

    def serve(self) -> NoReturn:
        self.send(
            {
                "type": "ready",
                "v": PROTOCOL_VERSION,
                "isolation": self.isolation,
                "python": sys.version.split()[0],
                "cwd": os.getcwd(),
            }
        )
        threading.Thread(target=self._read_commands, name="commands", daemon=True).start()
        while True:
            message = self.commands.get()
            kind = message.get("type")
            if kind == "execute":
                self.execute(message)
            elif kind == "inspect":
                self.inspect(message)
            elif kind == "shutdown":
                os._exit(0)

    # -- runtime primitives ----------------------------------------------------------------

    def call_primitive(self, op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if os.getpid() != self.pid:
            raise RuntimeError("runtime primitives work only in the interpreter's own process")
        with self.call_lock:
            self.calls += 1
            number = self.calls
            message = {
                "type": "call",
                "id": self.current,
                "call": number,
                "op": op,
                "args": args,
                "kwargs": kwargs,
            }
            try:
                json.dumps(message)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"runtime.{op}: arguments must be JSON values (str, int, float, bool, "
                    f"None, lists and dicts of them): {exc}"
                ) from None
            self.send(message)
            while True:
                reply = self.replies.get()
                if reply.get("call") == number:
                    break
        if reply.get("suspend"):
            raise TurnSuspended
        if reply.get("ok"):
            return reply.get("value")
        raw = reply.get("error")
        error: dict[str, Any] = raw if isinstance(raw, dict) else {}
        error_type = str(error.get("type") or "RuntimeError")
        text = str(error.get("message") or "the runtime primitive failed")
        native = _REMOTE_ERRORS.get(error_type)
        if native is not None:
            raise native(text)
        raise RuntimePrimitiveError(error_type, text)

    # -- commands -----------------------------------------------------------------------

    def execute(self, message: dict[str, Any]) -> None:
        exec_id = str(message.get("id"))
        code = message.get("code")
        self.cell += 1
        filename = f"<cell {self.cell}>"
        self.current = exec_id
        try:
            outcome = self._run_cell(code if isinstance(code, str) else "", filename)
        except KeyboardInterrupt:  # landed just outside the code
            outcome = {"ok": False, "stopped": "interrupt", "error": _interrupted()}
        finally:
            self.current = None
        if os.getpid() != self.pid:
            os._exit(0 if outcome.get("ok") else 1)  # a process the code forked: never reply
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if self.isolated:
            self._stop_other_processes()
        self.send({"type": "result", "id": exec_id, **outcome})

    def _run_cell(self, code: str, filename: str) -> dict[str, Any]:
        try:
            tree = ast.parse(code, filename, "exec")
        except (SyntaxError, ValueError) as exc:
            return {"ok": False, "error": _describe(exc, code, filename)}
        lines = code.splitlines(keepends=True) or ["\n"]
        linecache.cache[filename] = (len(code), None, lines, filename)
        last: ast.expr | None = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            node = tree.body.pop()
            assert isinstance(node, ast.Expr)
            last = node.value
        self.namespace["runtime"] = self.proxy
        try:
            self.in_user_code = True
            try:
                if tree.body:
                    exec(compile(tree, filename, "exec"), self.namespace)
                value = None
                if last is not None:
                    expression = ast.Expression(last)
                    value = eval(compile(expression, filename, "eval"), self.namespace)
                shown = None if value is None else self._repr(value)
            finally:
                self.in_user_code = False
        except TurnSuspended:
            return {"ok": False, "stopped": "suspended"}
        except CpuTimeExceeded:
            return {"ok": False, "stopped": "cpu", "error": _error("CpuTimeExceeded", "")}
        except KeyboardInterrupt:
            return {"ok": False, "stopped": "interrupt", "error": _interrupted()}
        except BaseException as exc:
            return {"ok": False, "stopped": _limit_of(exc), "error": _describe(exc, code, filename)}
        return {"ok": True, "value": shown}

    def _repr(self, value: Any) -> str:
        try:
            text = repr(value)
        except Exception as exc:
            text = f"<repr() failed: {type(exc).__name__}: {exc}>"
        if len(text) > self.max_repr:
            text = text[: self.max_repr] + f"... [{len(text) - self.max_repr} more characters]"
        return text

    def _stop_other_processes(self) -> None:
        """Processes a cell started do not outlive it: signal every process of the
        sandbox's uid in its namespace but this one (pid 1 is root) until none is left
        (a process forked while the signals went out is caught by the next round), and
        reap our own children meanwhile (pid 1 reaps the orphans)."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                return  # nobody left (zombies count until they are reaped)
            self._reap()
            time.sleep(0.005)

    @staticmethod
    def _reap() -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def inspect(self, message: dict[str, Any]) -> None:
        variables: list[dict[str, str]] = []
        self.in_user_code = True
        try:
            for name, value in list(self.namespace.items()):
                if name.startswith("_") or name == "runtime":
                    continue
                if len(variables) >= 200:
                    break
                text = self._repr(value)
                variables.append(
                    {
                        "name": name,
                        "type": type(value).__name__,
                        "repr": text if len(text) <= 200 else text[:199] + "…",
                    }
                )
        except KeyboardInterrupt:
            pass
        finally:
            self.in_user_code = False
        self.send({"type": "inspected", "id": message.get("id"), "variables": variables})


def _limit_of(exc: BaseException) -> str | None:
    """Which sandbox limit an exception of the code comes from (None: an ordinary one)."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, OSError) and exc.errno == errno.EAGAIN:
        return "processes"  # fork() or clone() refused: the process limit
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "processes"
    if isinstance(exc, OSError) and exc.errno in (errno.EFBIG, errno.ENOSPC):
        return "disk"
    return None


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "line": None, "snippet": None, "traceback": ""}


def _interrupted() -> dict[str, Any]:
    return _error("KeyboardInterrupt", "the code was interrupted")


def _describe(exc: BaseException, code: str, filename: str) -> dict[str, Any]:
    """An exception of the code, as the model needs it: type, message, where, traceback
    (the code's own frames only)."""
    try:
        message = str(exc)
    except Exception:
        message = "<str() failed>"
    line: int | None = None
    if isinstance(exc, SyntaxError):
        line = exc.lineno
        message = exc.msg or message
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    if frames:
        line = frames[-1].lineno
    source = code.splitlines()
    snippet = source[line - 1] if line is not None and 1 <= line <= len(source) else None
    try:
        last = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    except Exception:
        last = type(exc).__name__
    trace = "".join(traceback.format_list(frames)) + last
    return {
        "type": type(exc).__name__,
        "message": message[:4000],
        "line": line,
        "snippet": snippet,
        "traceback": trace[-8000:],
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    fd = int(config["proto_fd"])
    _die_with_parent()
    if os.getppid() != int(config["parent_pid"]):
        os._exit(70)  # the worker died before we set the death signal
    try:
        isolation = _isolate(config)
        _apply_limits(config, isolation["mode"] == "isolated")
    except OSError as exc:
        _fail(fd, f"sandbox setup failed: {exc}")
    sys.argv = [""]
    Repl(config, isolation).serve()


if __name__ == "__main__":
    main()
