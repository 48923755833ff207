"""Sandboxed execution of tool calls (``"package.module:function"`` + a dict of keyword arguments).

    with Sandbox(SandboxConfig(timeout_s=2.0), workers=2) as sb:
        r = sb.execute("pkg.tools:get_weather", {"city": "Paris"})  # never raises for what the tool does

Calls run in long-lived, reused worker processes ("forkserver" context, else "spawn"; never plain
fork, as the caller may be a multithreaded Ray actor) that import tool modules lazily and talk to
the caller over a pipe in JSON only (a hostile worker cannot make the caller unpickle anything).

* Memory: ``RLIMIT_AS`` = ``memory_mb`` (address space, not RSS). MemoryError -> ``"memory"``, as
  is a SIGKILL we did not send (OOM killer); other deaths (segfault, os._exit) -> ``"crashed"``.
* Time: the caller SIGKILLs a worker that exceeds ``timeout_s`` -> ``"timeout"``. Dead workers
  are restarted lazily before the next call is sent, so start-up never counts toward a timeout.
* Files/network/processes: cwd, TMPDIR and ``tempfile.tempdir`` are a private directory (deleted
  by the caller), and a ``sys.addaudithook`` hook raises PermissionError (-> ``"refused"``, naming
  the event) for ``socket.*`` events unless ``allow_network`` (creating AF_UNIX sockets, as
  asyncio does, is allowed; connecting or binding them is not); ``open`` for writing (mode with
  w/a/x/+, or flags with O_WRONLY/O_RDWR/O_CREAT/O_APPEND/O_TRUNC) outside the private directory
  (symlinks resolved, /dev/null allowed); os.remove/rename/rmdir/mkdir/chmod/chown/link/symlink/
  truncate/utime/mkfifo/mknod, shutil.rmtree and sqlite3.connect outside it (both ends of a
  rename or hard link, each against its own dir_fd: a hard link to an outside file would let a
  write "inside" change it); subprocess.Popen, os.system, os.exec*, os.spawn*, os.posix_spawn,
  os.fork/forkpty, _posixsubprocess.fork_exec (multiprocessing's spawn), os.kill/killpg,
  signal.pidfd_send_signal and resource.setrlimit/prlimit (mkfifo, mknod, fork_exec and
  pidfd_send_signal raise no audit event: the worker wraps them to raise one). Reads work, except
  opening a directory outside the private one (its fd would let ``dir_fd=`` calls write outside)
  and ``/proc/<pid>/environ`` or ``/proc/<pid>/mem`` of any process (the caller's secrets). A call
  is "refused" if the exception ending it is or was caused by a refusal; a tool that catches the
  error and carries on gets its result (nothing escaped).
* Environment: the worker keeps only ``_ENV_KEEP`` (PATH, HOME, locale, TZ) plus TMPDIR, in
  ``os.environ`` and ``posix.environ`` alike, so API keys of the caller are not visible to tools.

Error types: ``exception`` ("Type: message"; ``detail`` = last tool frame), ``timeout``,
``memory``, ``refused``, ``bad_output`` (not strict JSON, e.g. a set, an object or NaN, or over
``max_output_bytes``), ``crashed`` and ``bad_call``: anything wrong with the *call* rather than the
tool - impl not ``module:function``, missing module/attribute, arguments not a JSON-serialisable
dict, or arguments that do not bind to the signature (unexpected/missing keyword; checked with
inspect.signature before calling, so a TypeError raised inside the tool stays ``exception``).

Security model: audit hooks + rlimits + process isolation contain buggy and casually hostile
*Python* tools. This is not a kernel-level sandbox (no seccomp, namespaces or chroot; workers run
as the caller's user and can read whatever that user can): ctypes/native code (e.g. libc's fork()
or write()) and other deliberate audit-hook bypasses remain possible. Untrusted native code or
malicious tools need container/VM isolation.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Sandbox", "SandboxConfig", "SandboxError", "ToolResult"]

_IMPL_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_PROC_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                          "os.forkpty", "os.kill", "os.killpg", "resource.setrlimit", "resource.prlimit",
                          "_posixsubprocess.fork_exec", "signal.pidfd_send_signal"})
# event -> per path argument: (its index, index of its dir_fd argument, acts on the name itself (no symlink
# follow)). The source of a hard link is resolved: linking an outside file in would make it writable.
_PATH_EVENTS: dict[str, tuple[tuple[int, int | None, bool], ...]] = {
    "os.remove": ((0, 1, True),), "os.rmdir": ((0, 1, True),), "os.mkdir": ((0, 2, True),),
    "os.rename": ((0, 2, True), (1, 3, True)), "os.link": ((0, 2, False), (1, 3, True)),
    "os.symlink": ((1, 2, True),), "shutil.rmtree": ((0, 1, True),), "os.chmod": ((0, 2, False),),
    "os.chown": ((0, 3, False),), "os.utime": ((0, 3, False),), "os.truncate": ((0, None, False),),
    "os.setxattr": ((0, None, False),), "os.removexattr": ((0, None, False),),
    "os.mkfifo": ((0, 1, True),), "os.mknod": ((0, 1, True),)}  # the last two: raised by _audit_first
# Functions that raise no audit event, wrapped in the worker to raise one: (module, name, event). fork_exec
# starts the child of subprocess and of multiprocessing's spawn; pidfd_send_signal signals any process.
_UNAUDITED = (("os", "mkfifo", "os.mkfifo"), ("posix", "mkfifo", "os.mkfifo"), ("os", "mknod", "os.mknod"),
              ("posix", "mknod", "os.mknod"), ("_posixsubprocess", "fork_exec", "_posixsubprocess.fork_exec"),
              ("signal", "pidfd_send_signal", "signal.pidfd_send_signal"))
_SECRET_PROC_RE = re.compile(r"^/proc/[^/]+(/task/[^/]+)?/(environ|mem)$")
_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
_SIGNAMES = {int(s): s.name for s in signal.Signals}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class SandboxError(RuntimeError):
    """Misuse (a call after close()) or a worker process that cannot start at all."""


class _Refused(PermissionError):
    pass


@dataclass
class ToolResult:
    ok: bool
    output: Any
    error: str | None
    error_type: str | None
    seconds: float
    detail: str | None = None


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 5.0  # per call, measured from sending the call to the worker
    memory_mb: int = 512  # RLIMIT_AS of each worker process
    max_output_bytes: int = 65536  # of the (ASCII) JSON of the result
    allow_network: bool = False
    extra_sys_path: Sequence[str] = ()  # prepended to the worker's sys.path (a copy of the caller's)
    startup_timeout_s: float = 60.0  # a worker that is not ready by then -> SandboxError


def _fail(kind: str, error: str, detail: str | None = None) -> str:
    return json.dumps({"ok": False, "error_type": kind, "error": error[:2000], "detail": detail})


def _exc_text(exc: BaseException) -> str:
    try:
        msg = str(exc)
    except Exception:  # noqa: BLE001 - a hostile __str__
        msg = "<unprintable>"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _classify(exc: BaseException, memory_mb: int) -> str:
    chain, e = [exc], exc.__cause__ or exc.__context__
    while e is not None and len(chain) < 20 and e not in chain:
        chain, e = [*chain, e], e.__cause__ or e.__context__
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    detail = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}: {frames[-1].line}" if frames else None
    if refused := [c for c in chain if isinstance(c, _Refused)]:
        return _fail("refused", f"PermissionError: {refused[0]}", detail)
    if any(isinstance(c, MemoryError) for c in chain):
        return _fail("memory", f"MemoryError: tool exceeded the {memory_mb} MB memory cap", detail)
    return _fail("exception", _exc_text(exc), detail)


def _resolve(impl: str, cache: dict[str, Callable[..., Any]]) -> Callable[..., Any] | str:
    if impl in cache:
        return cache[impl]
    import importlib

    mod_name, attr = impl.split(":", 1)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:  # only a missing *tool* module is a bad call, not a missing dependency
        if exc.name and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
            return _fail("bad_call", f"ModuleNotFoundError: No module named {exc.name!r} (impl {impl!r})")
        raise
    for part in attr.split("."):
        if not hasattr(obj, part):
            return _fail("bad_call", f"AttributeError: {mod_name!r} has no attribute {attr!r} (impl {impl!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        return _fail("bad_call", f"TypeError: {impl!r} is not callable")
    cache[impl] = obj
    return obj


def _bind_error(fn: Callable[..., Any], args: dict[str, Any]) -> str | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    ps = sig.parameters
    extra = [k for k in args if k not in ps or ps[k].kind == inspect.Parameter.POSITIONAL_ONLY]
    if extra and not any(p.kind == p.VAR_KEYWORD for p in ps.values()):
        return f"got an unexpected keyword argument {extra[0]!r}"
    try:
        sig.bind(**args)
    except TypeError as exc:
        return str(exc)
    return None


def _run(impl: str, args: dict[str, Any], cache: dict[str, Callable[..., Any]], cfg: SandboxConfig) -> str:
    try:
        fn = _resolve(impl, cache)
        if isinstance(fn, str):
            return fn
        if (why := _bind_error(fn, args)) is not None:
            return _fail("bad_call", f"TypeError: {impl.split(':')[1]}() {why}")
        result = fn(**args)
    except BaseException as exc:  # noqa: BLE001 - SystemExit etc. from the tool must not end the worker
        return _classify(exc, cfg.memory_mb)
    try:
        out = json.dumps(result, allow_nan=False)  # ASCII: lone surrogates etc. survive the pipe
    except BaseException as exc:  # noqa: BLE001 - includes a hostile __repr__/__float__ of a subclass
        if isinstance(exc, MemoryError):
            return _fail("memory", f"MemoryError: result exceeded the {cfg.memory_mb} MB memory cap")
        return _fail("bad_output", f"bad_output: result is not JSON-serialisable ({_exc_text(exc)})")
    if (size := len(out)) > cfg.max_output_bytes:
        return _fail("bad_output", f"bad_output: result is {size} bytes of JSON, over the "
                                   f"{cfg.max_output_bytes}-byte limit")
    return '{"ok": true, "output": ' + out + "}"


def _make_hook(root: str, allow_network: bool) -> Callable[[str, tuple[Any, ...]], None]:
    local = threading.local()

    def inside(path: Any, dir_fd: Any = None, own_name: bool = False) -> bool:
        """Is path (relative to dir_fd or cwd) in root? own_name: the op acts on the name, not a link target."""
        if isinstance(path, int):
            path, own_name = f"/proc/self/fd/{path}", False
        full = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}") if isinstance(dir_fd, int) and dir_fd >= 0
                            else os.getcwd(), os.fsdecode(path))
        head, name = os.path.split(full)
        if own_name and name not in ("", ".", ".."):
            real = os.path.join(os.path.realpath(head), name)
            return real.startswith(root + os.sep)  # never the private directory itself
        real = os.path.realpath(full)
        return real == root or real.startswith(root + os.sep) or real == os.devnull

    def check(event: str, args: tuple[Any, ...]) -> str | None:
        if event.startswith("socket."):
            if allow_network or (event == "socket.__new__" and len(args) > 1 and args[1] == socket.AF_UNIX):
                return None
            return f"{event}{args[1:] if event == 'socket.__new__' else args!r} (network access is disabled)"
        if event in _PROC_EVENTS:
            return f"{event} (starting or signalling processes is disabled)"
        if event == "open":
            path, mode, flags = (*args, None, None, None)[:3]
            if isinstance(path, int):  # an fd that was itself checked when opened
                return None
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & _WRITE_FLAGS))
            if writing and not inside(path):
                return f"open({path!r}, {mode or flags!r}) for writing outside the sandbox directory"
            real = os.path.realpath(os.fsdecode(path))
            if _SECRET_PROC_RE.match(real):
                return f"open({path!r}) of a process's environment or memory (secrets)"
            if not writing and os.path.isdir(real) and not inside(path):
                return f"open({path!r}) of a directory outside the sandbox directory (a dir_fd would escape it)"
        elif event == "sqlite3.connect" and args and args[0] not in (":memory:", "", b":memory:"):
            return None if inside(args[0]) else f"sqlite3.connect({args[0]!r}) outside the sandbox directory"
        elif (spec := _PATH_EVENTS.get(event)) is not None:
            for i, fd_idx, own_name in spec:
                dir_fd = args[fd_idx] if fd_idx is not None and fd_idx < len(args) else None
                if i < len(args) and not inside(args[i], dir_fd, own_name):
                    return f"{event}({args[i]!r}) outside the sandbox directory"
        return None

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if getattr(local, "busy", False):  # events raised by our own checks
            return
        local.busy = True
        try:
            reason = check(event, args)
        except Exception as exc:  # noqa: BLE001 - fail closed for the events we inspect
            reason = f"{event} (could not check its arguments: {_exc_text(exc)})"
        finally:
            local.busy = False
        if reason:
            raise _Refused(f"sandbox refused {reason}")

    return hook


def _audit_first(module_name: str, name: str, event: str) -> None:
    """Make ``module.name``, which raises no audit event of its own, raise ``event`` before it runs
    (with ``(path, dir_fd)`` for a path event, else with its arguments)."""
    import importlib

    module = importlib.import_module(module_name)
    fn = getattr(module, name, None)
    if fn is None:  # pidfd_send_signal: Linux only
        return
    if event in _PATH_EVENTS:
        def guarded(path: Any, *args: Any, dir_fd: int | None = None, **kwargs: Any) -> Any:
            sys.audit(event, path, dir_fd)
            return fn(path, *args, dir_fd=dir_fd, **kwargs)
    else:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            sys.audit(event, *args)
            return fn(*args, **kwargs)
    setattr(module, name, guarded)


def _scrub_environment(root: str) -> None:
    """Only ``_ENV_KEEP`` and TMPDIR survive, in os.environ (and the C environ) and in posix.environ."""
    keep = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ} | {"TMPDIR": root}
    os.environ.clear()  # unsetenv()s every variable of the C environ too
    os.environ.update(keep)
    import posix

    posix.environ.clear()  # the raw bytes copy os.environ was built from
    posix.environ.update({os.fsencode(k): os.fsencode(v) for k, v in keep.items()})


def _worker_main(conn: mpc.Connection, cfg: SandboxConfig, workdir: str, paths: list[str]) -> None:
    try:
        root = os.path.realpath(workdir)
        os.chdir(root)
        _scrub_environment(root)
        tempfile.tempdir = root
        sys.dont_write_bytecode = True
        sys.path[:] = list(dict.fromkeys(paths))
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # tool prints go nowhere; stderr is kept for fatal-error reports
        os.close(devnull)
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (int(cfg.memory_mb) << 20, int(cfg.memory_mb) << 20))
        for module_name, name, event in _UNAUDITED:
            _audit_first(module_name, name, event)
        sys.addaudithook(_make_hook(root, cfg.allow_network))
        conn.send_bytes(b'{"ready": true}')
    except BaseException as exc:  # noqa: BLE001
        conn.send_bytes(json.dumps({"ready": False, "error": _exc_text(exc)}).encode())
        return
    cache: dict[str, Callable[..., Any]] = {}
    while True:
        try:
            req = json.loads(conn.recv_bytes())
        except EOFError:  # the caller went away
            return
        if req is None:  # close()
            return
        try:
            os.chdir(root)
            payload = _run(req["impl"], req["args"], cache, cfg)
        except MemoryError:
            payload = _fail("memory", f"MemoryError: tool exceeded the {cfg.memory_mb} MB memory cap")
        except BaseException as exc:  # noqa: BLE001 - the tool broke the worker itself: report, then exit
            conn.send_bytes(_fail("crashed", f"crashed: sandbox worker broken ({_exc_text(exc)})").encode())
            return
        conn.send_bytes(payload.encode())


class _Worker:
    """Caller-side handle of one worker process and its private directory."""

    def __init__(self, ctx: Any, cfg: SandboxConfig) -> None:
        self.ctx, self.cfg = ctx, cfg
        self.proc: Any = None
        self.conn: Any = None
        self.workdir: str | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def ensure(self) -> None:
        if self.alive():
            return
        self.kill()
        self.workdir = tempfile.mkdtemp(prefix="ttpa-sandbox-")
        paths = [os.path.abspath(str(p) or ".") for p in (*self.cfg.extra_sys_path, *sys.path)]
        self.conn, child = self.ctx.Pipe(duplex=True)
        self.proc = self.ctx.Process(target=_worker_main, args=(child, self.cfg, self.workdir, paths),
                                     daemon=True, name="ttpa-sandbox-worker")
        self.proc.start()
        child.close()
        try:
            msg = json.loads(self.conn.recv_bytes(65536)) if self.conn.poll(self.cfg.startup_timeout_s) else {
                "error": f"no answer within {self.cfg.startup_timeout_s} s"}
        except (EOFError, OSError, ValueError) as exc:
            msg = {"error": _exc_text(exc)}
        if not msg.get("ready"):
            self.kill()
            raise SandboxError(f"sandbox worker failed to start: {msg.get('error')}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(5)
        if self.conn is not None:
            self.conn.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.proc = self.conn = self.workdir = None

    def receive(self, t0: float) -> ToolResult:
        try:
            msg = json.loads(self.conn.recv_bytes(self.cfg.max_output_bytes + 65536))
            if not isinstance(msg, dict) or "ok" not in msg:
                raise ValueError("malformed response")
        except (EOFError, OSError, ValueError) as exc:  # died mid-call, or wrote garbage into the pipe
            self.proc.join(1)
            code = self.proc.exitcode
            self.kill()
            if code == -signal.SIGKILL:
                return ToolResult(False, None, "memory: tool worker was killed by SIGKILL (out-of-memory killer?)",
                                  "memory", time.monotonic() - t0)
            how = (f"exited with code {code}" if code is not None and code >= 0 else f"sent a bad response ({exc})"
                   if code is None else f"killed by signal {_SIGNAMES.get(-code, -code)}")
            return ToolResult(False, None, f"crashed: tool worker process {how}", "crashed", time.monotonic() - t0)
        seconds = time.monotonic() - t0
        if msg["ok"]:
            return ToolResult(True, msg.get("output"), None, None, seconds)
        if msg.get("error_type") in ("memory", "crashed"):
            self.kill()  # start afresh rather than trust a worker that hit its limits
        return ToolResult(False, None, str(msg.get("error")), str(msg.get("error_type")), seconds, msg.get("detail"))


def _encode(impl: Any, arguments: Any) -> bytes | ToolResult:
    """The request bytes for a call, or its ``bad_call`` result (checked in the caller, no round trip)."""
    if not isinstance(impl, str) or not _IMPL_RE.match(impl):
        msg = f"impl must be 'package.module:function', got {impl!r}"
    elif not isinstance(arguments, dict):
        msg = f"arguments must be a JSON object (dict), got {type(arguments).__name__}"
    elif not all(isinstance(k, str) and k.isidentifier() for k in arguments):
        msg = f"argument names must be identifiers, got {sorted(map(str, arguments))}"
    else:
        try:
            return json.dumps({"impl": impl, "args": arguments}, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            msg = f"arguments are not JSON-serialisable ({_exc_text(exc)})"
    return ToolResult(False, None, f"bad_call: {msg}", "bad_call", 0.0)


class Sandbox:
    """Runs tool calls in ``workers`` long-lived, restricted worker processes (see the module doc)."""

    def __init__(self, config: SandboxConfig = SandboxConfig(), workers: int = 1) -> None:
        if workers < 1 or not 0 < config.timeout_s < float("inf"):
            raise ValueError("need workers >= 1 and a finite timeout_s > 0")
        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        self.config = config
        self._workers = [_Worker(ctx, config) for _ in range(workers)]
        self._lock = threading.Lock()
        self._closed = False

    def execute(self, impl: str, arguments: dict[str, Any]) -> ToolResult:
        return self.execute_many([(impl, arguments)])[0]

    def execute_many(self, calls: Sequence[tuple[str, dict[str, Any]]]) -> list[ToolResult]:
        """Run the calls on the workers in parallel; results are in the order of ``calls``."""
        with self._lock:
            if self._closed:
                raise SandboxError("Sandbox is closed")
            results: list[ToolResult | None] = [None] * len(calls)
            queue: deque[tuple[int, bytes]] = deque()
            for i, (impl, args) in enumerate(calls):
                req = _encode(impl, args)
                if isinstance(req, ToolResult):
                    results[i] = req
                else:
                    queue.append((i, req))
            busy: dict[_Worker, tuple[int, float]] = {}  # worker -> (call index, send time)
            limit = self.config.timeout_s
            try:
                while queue or busy:
                    for w in self._workers:
                        if queue and w not in busy:
                            i, req = queue.popleft()
                            busy[w] = (i, self._send(w, req))
                    deadline = min(t0 for _, t0 in busy.values()) + limit
                    ready = set(mpc.wait([x for w in busy for x in (w.conn, w.proc.sentinel)],
                                         max(0.0, deadline - time.monotonic())))
                    now = time.monotonic()
                    for w, (i, t0) in list(busy.items()):
                        if w.conn in ready or w.proc.sentinel in ready:
                            results[i] = w.receive(t0)
                        elif now - t0 >= limit:
                            w.kill()
                            results[i] = ToolResult(False, None, f"timeout: tool ran longer than {limit} s",
                                                    "timeout", now - t0)
                        else:
                            continue
                        del busy[w]
            except BaseException:
                for w in busy:  # never leave a stale answer in a pipe
                    w.kill()
                raise
            return [r for r in results if r is not None]

    @staticmethod
    def _send(w: _Worker, req: bytes) -> float:
        for _ in range(2):
            w.ensure()
            try:
                w.conn.send_bytes(req)
                return time.monotonic()
            except OSError:  # the worker died between calls: replace it and retry once
                w.kill()
        raise SandboxError("could not send a call to a fresh sandbox worker")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for w in self._workers:
                if w.alive():
                    try:
                        w.conn.send_bytes(b"null")
                        w.proc.join(1)
                    except OSError:
                        pass
                w.kill()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
