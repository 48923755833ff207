"""Well-behaved, buggy and hostile tools for tests/test_sandbox.py (run only inside the sandbox)."""

from __future__ import annotations

import os
import time
from typing import Any

CITIES = {"Paris": 18.5, "Tokyo": 22.0}


def weather(city: str, unit: str = "c") -> dict[str, Any]:
    if city not in CITIES:
        raise ValueError(f"unknown city {city!r}")
    return {"city": city, "temp": CITIES[city], "unit": unit}


def whoami() -> dict[str, Any]:
    return {"pid": os.getpid(), "cwd": os.getcwd()}


def spin() -> None:
    while True:
        pass


def sleep(seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}


def memory_bomb() -> int:
    return len(bytearray(2 * 1024**3))


def memory_creep() -> int:
    chunks = []
    while True:
        chunks.append(bytearray(64 << 20))  # calloc: counts toward RLIMIT_AS without touching pages


def connect_localhost(port: int = 9) -> str:
    import socket

    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return "connected"


def resolve(host: str = "example.com") -> Any:
    import socket

    return socket.getaddrinfo(host, 80)[0][4][0]


def socket_swallowed() -> str:
    import socket

    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except PermissionError:
        return "swallowed"
    return "opened"


def asyncio_ok() -> int:
    import asyncio

    async def main() -> int:
        await asyncio.sleep(0)
        return 7

    return asyncio.run(main())


def write_file(path: str, text: str = "pwned") -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def os_open_write(path: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    return path


def write_local(name: str) -> dict[str, Any]:
    with open(name, "w") as f:
        f.write("hello")
    os.makedirs("sub/dir", exist_ok=True)
    os.rename(name, "sub/dir/" + name)
    with open("sub/dir/" + name) as f:
        text = f.read()
    import shutil
    import tempfile

    with tempfile.NamedTemporaryFile("w") as t:
        t.write("tmp")
    shutil.rmtree("sub")
    return {"text": text, "cwd": os.getcwd(), "left": os.listdir(".")}


def remove(path: str) -> None:
    os.remove(path)


def rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path)


def run_subprocess() -> str:
    import subprocess

    return subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout


def run_system(marker: str) -> int:
    return os.system(f"touch {marker}")


def kill_parent() -> None:
    import signal

    os.kill(os.getppid(), signal.SIGTERM)


def hard_exit(code: int = 3) -> None:
    os._exit(code)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def sys_exit() -> None:
    raise SystemExit(2)


def return_set() -> Any:
    return {1, 2, 3}


def return_object() -> Any:
    return object()


def return_nan() -> float:
    return float("nan")


def return_big(n: int) -> str:
    return "x" * n


def return_tuple() -> Any:
    return (1, "a", None, [True])


def inner_type_error() -> int:
    return len(5)  # type: ignore[arg-type]


def read_package_data() -> dict[str, Any]:
    from importlib.resources import files

    text = files("ttpa_ray").joinpath("models/tool_chat_template.jinja").read_text()
    with open(os.path.join(os.path.dirname(__file__), "sandbox_tools.py")) as f:
        own = f.read()
    return {"chars": len(text), "has_jinja": "{%" in text or "{{" in text, "own": own.splitlines()[0]}


NOT_CALLABLE = 42


def symlink_escape(target: str) -> str:
    os.symlink(target, "link")
    return write_file("link")


def remove_own_dir() -> None:
    os.rmdir(os.getcwd())


# --- hostile tools for tests/test_security.py -------------------------------------------------


def connect_raw(port: int) -> str:
    """A bare AF_INET socket and connect(): no getaddrinfo on the way."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    s.connect(("127.0.0.1", port))
    s.close()
    return "connected"


def connect_unix(path: str) -> str:
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.close()
    return "connected"


def resolve_name(host: str = "localhost") -> str:
    import socket

    return socket.gethostbyname(host)


def start_process(how: str) -> Any:
    import sys

    if how == "fork":
        return os.fork()
    if how == "forkpty":  # directly: pty.fork() swallows the refusal (an OSError) and tries os.fork()
        return os.forkpty()[0]
    if how == "execv":
        os.execv(sys.executable, [sys.executable, "-c", "pass"])
    if how == "posix_spawn":
        return os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {})
    if how == "spawnv":
        return os.spawnv(os.P_WAIT, sys.executable, [sys.executable, "-c", "pass"])
    if how == "popen":
        return os.popen("echo hi").read()
    if how == "multiprocessing":  # spawn starts its child with _posixsubprocess.fork_exec (no audit event)
        import multiprocessing

        multiprocessing.current_process()._config["daemon"] = False  # lift "daemons have no children"
        proc = multiprocessing.get_context("spawn").Process(target=os.getpid)
        proc.start()
        proc.join()
        return proc.exitcode
    if how == "pidfd_signal":  # signal 0: checks the call is refused without harming anyone if it is not
        import signal

        return signal.pidfd_send_signal(os.pidfd_open(os.getppid()), 0)
    raise ValueError(how)


def fork_bomb(limit: int = 64) -> int:
    """Bounded, and each child exits at once: a broken sandbox fails the test, not the machine."""
    children = 0
    for _ in range(limit):
        if os.fork() == 0:
            os._exit(0)
        children += 1
    return children


def stubborn_spin() -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            while True:
                pass
        except BaseException:  # noqa: BLE001 - hostile: swallow whatever is thrown at it
            continue


def hoard_memory() -> None:
    """Allocate forever, swallowing every MemoryError: only the timeout can end it."""
    chunks = []
    while True:
        try:
            chunks.append(bytearray(64 << 20))
        except MemoryError:
            continue


def escape_write(how: str, target: str) -> str:
    """Ways to create or change a file at ``target`` (outside the sandbox directory)."""
    import pathlib
    import shutil
    import tempfile

    if how == "pathlib":
        pathlib.Path(target).write_text("pwned")
    elif how == "append":
        with open(target, "a") as f:
            f.write("pwned")
    elif how == "replace":
        pathlib.Path("local").write_text("pwned")
        os.replace("local", target)
    elif how == "copy":
        pathlib.Path("local").write_text("pwned")
        shutil.copy("local", target)
    elif how == "mkstemp":
        os.close(tempfile.mkstemp(dir=os.path.dirname(target))[0])
    elif how == "makedirs":
        os.makedirs(os.path.join(target, "sub"))
    elif how == "mkfifo":
        os.mkfifo(target)
    elif how == "hardlink":  # a hard link inside to an outside file, then write "inside"
        os.link(target, "hard")
        with open("hard", "w") as f:
            f.write("pwned")
    elif how == "dir_fd":  # an fd of the outside directory, then a relative create against it
        fd = os.open(os.path.dirname(target), os.O_RDONLY)
        os.close(os.open(os.path.basename(target), os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    elif how == "chdir":
        os.chdir(os.path.dirname(target))
        with open(os.path.basename(target), "w") as f:
            f.write("pwned")
    elif how == "sqlite":
        import sqlite3

        sqlite3.connect(target).execute("create table t (x)")
    else:
        raise ValueError(how)
    return "escaped"


def read_env(name: str) -> dict[str, Any]:
    import posix

    return {"os.environ": os.environ.get(name), "os.getenv": os.getenv(name),
            "posix.environ": (posix.environ.get(name.encode()) or b"").decode() or None,
            "names": sorted(os.environ)}


def read_proc(pid: str, name: str = "environ", via_symlink: bool = False) -> str:
    """Read /proc/<pid>/<name>; pid "parent" is the worker's parent (the forkserver)."""
    path = f"/proc/{os.getppid() if pid == 'parent' else pid}/{name}"
    if via_symlink:
        if os.path.lexists("innocent.txt"):
            os.remove("innocent.txt")
        os.symlink(path, "innocent.txt")
        path = "innocent.txt"
    with open(path, "rb") as f:
        return f.read(1 << 16).decode("latin-1")
