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
