"""Sandboxed tool execution: containment of buggy and hostile tools (tools in sandbox_tools.py)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from ttpa_ray.tools.sandbox import Sandbox, SandboxConfig, SandboxError, ToolResult

HERE = str(Path(__file__).resolve().parent)
TIMEOUT = 1.5
CFG = SandboxConfig(timeout_s=TIMEOUT, memory_mb=512, extra_sys_path=[HERE])


@pytest.fixture(scope="module")
def sb():
    with Sandbox(CFG) as box:
        yield box


def call(sb: Sandbox, func: str, **kwargs) -> ToolResult:
    return sb.execute(f"sandbox_tools:{func}", kwargs)


def assert_healthy(sb: Sandbox) -> None:
    r = call(sb, "weather", city="Tokyo")
    assert r.ok and r.output == {"city": "Tokyo", "temp": 22.0, "unit": "c"}, r


def test_normal_tool_runs_in_reused_worker_process(sb):
    r = call(sb, "weather", city="Paris", unit="f")
    assert r.ok and r.error is None and r.error_type is None
    assert r.output == {"city": "Paris", "temp": 18.5, "unit": "f"}
    a, b = call(sb, "whoami"), call(sb, "whoami")
    assert a.output["pid"] != os.getpid() and a.output["pid"] == b.output["pid"]
    assert Path(a.output["cwd"]).name.startswith("ttpa-sandbox-")
    assert call(sb, "return_tuple").output == [1, "a", None, [True]]
    assert call(sb, "asyncio_ok").output == 7  # AF_UNIX socketpair is allowed


def test_exception_is_toolbench_style(sb):
    r = call(sb, "weather", city="Atlantis")
    assert not r.ok and r.output is None and r.error_type == "exception"
    assert r.error == "ValueError: unknown city 'Atlantis'"
    assert "Traceback" not in r.error and "sandbox_tools.py" in (r.detail or "")
    assert call(sb, "inner_type_error").error_type == "exception"  # TypeError inside the tool
    r = call(sb, "sys_exit")
    assert r.error_type == "exception" and r.error == "SystemExit: 2"
    assert_healthy(sb)


@pytest.mark.parametrize("func", ["spin", "sleep"])
def test_timeout_kills_and_replaces_worker(sb, func):
    pid = call(sb, "whoami").output["pid"]
    t0 = time.monotonic()
    r = call(sb, func, **({"seconds": 60} if func == "sleep" else {}))
    assert time.monotonic() - t0 < TIMEOUT + 2
    assert r.error_type == "timeout" and r.error == f"timeout: tool ran longer than {TIMEOUT} s"
    assert_healthy(sb)
    assert call(sb, "whoami").output["pid"] != pid


@pytest.mark.parametrize("func", ["memory_bomb", "memory_creep"])
def test_memory_cap(sb, func):
    r = call(sb, func)
    assert r.error_type == "memory" and r.error.startswith("MemoryError"), r
    assert_healthy(sb)


@pytest.mark.parametrize("func,kwargs,what", [
    ("connect_localhost", {}, "socket"),
    ("resolve", {}, "socket.getaddrinfo"),
    ("run_subprocess", {}, "subprocess.Popen"),
    ("kill_parent", {}, "os.kill"),
])
def test_network_and_processes_refused(sb, func, kwargs, what):
    r = call(sb, func, **kwargs)
    assert r.error_type == "refused" and r.error.startswith("PermissionError: sandbox refused"), r
    assert what in r.error


def test_os_system_refused_and_has_no_effect(sb, tmp_path):
    marker = tmp_path / "marker"
    r = call(sb, "run_system", marker=str(marker))
    assert r.error_type == "refused" and "os.system" in r.error
    assert not marker.exists()


def test_swallowed_refusal_returns_tool_output(sb):
    assert call(sb, "socket_swallowed").output == "swallowed"


@pytest.mark.parametrize("func", ["write_file", "os_open_write"])
def test_write_outside_refused(sb, func):
    target = Path(f"/tmp/outside_{uuid.uuid4().hex[:8]}")
    r = call(sb, func, path=str(target))
    assert r.error_type == "refused" and str(target) in r.error, r
    assert not target.exists()
    r = call(sb, func, path="../escape_" + uuid.uuid4().hex[:8])
    assert r.error_type == "refused", r


def test_remove_outside_refused(sb, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    assert call(sb, "remove", path=str(victim)).error_type == "refused"
    assert call(sb, "rmtree", path=str(tmp_path)).error_type == "refused"
    assert victim.read_text() == "keep me"


def test_symlink_escape_and_own_dir_removal_refused(sb):
    target = Path(f"/tmp/outside_{uuid.uuid4().hex[:8]}")
    r = call(sb, "symlink_escape", target=str(target))
    assert r.error_type == "refused" and "for writing outside" in r.error, r
    assert not target.exists()
    assert call(sb, "remove_own_dir").error_type == "refused"
    assert_healthy(sb)


def test_allow_network_lifts_the_socket_ban():
    with Sandbox(SandboxConfig(timeout_s=TIMEOUT, extra_sys_path=[HERE], allow_network=True)) as box:
        assert box.execute("sandbox_tools:socket_swallowed", {}).output == "opened"


def test_write_inside_own_directory_works(sb):
    r = call(sb, "write_local", name="notes.txt")
    assert r.ok, r
    assert r.output["text"] == "hello"  # the directory is per worker, so earlier calls' files may remain
    assert not {"notes.txt", "sub"} & set(r.output["left"]) and not any(f.startswith("tmp") for f in r.output["left"])


def test_read_package_data(sb):
    r = call(sb, "read_package_data")
    assert r.ok, r
    assert r.output["chars"] > 0 and r.output["has_jinja"]
    assert r.output["own"].startswith('"""Well-behaved')


@pytest.mark.parametrize("func,kwargs,how", [
    ("hard_exit", {"code": 3}, "exited with code 3"),
    ("segfault", {}, "killed by signal SIGSEGV"),
])
def test_crash_is_reported_and_worker_replaced(sb, func, kwargs, how):
    r = call(sb, func, **kwargs)
    assert r.error_type == "crashed" and how in r.error, r
    assert_healthy(sb)


@pytest.mark.parametrize("func,kwargs", [
    ("return_set", {}), ("return_object", {}), ("return_nan", {}), ("return_big", {"n": 70_000}),
])
def test_bad_output(sb, func, kwargs):
    r = call(sb, func, **kwargs)
    assert r.error_type == "bad_output" and r.output is None, r
    assert call(sb, "return_big", n=1000).ok


@pytest.mark.parametrize("impl,args,needle", [
    ("sandbox_tools.weather", {"city": "Paris"}, "package.module:function"),
    ("", {}, "package.module:function"),
    (None, {}, "package.module:function"),
    ("no_such_module_xyz:f", {}, "No module named 'no_such_module_xyz'"),
    ("sandbox_tools:no_such_func", {}, "no attribute"),
    ("sandbox_tools:NOT_CALLABLE", {}, "not callable"),
    ("sandbox_tools:weather", ["Paris"], "must be a JSON object"),
    ("sandbox_tools:weather", {"city": {1, 2}}, "not JSON-serialisable"),
    ("sandbox_tools:weather", {"town": "Paris"}, "unexpected keyword argument 'town'"),
    ("sandbox_tools:weather", {}, "missing a required argument: 'city'"),
])
def test_bad_call(sb, impl, args, needle):
    r = sb.execute(impl, args)  # type: ignore[arg-type]
    assert r.error_type == "bad_call" and not r.ok, r
    assert needle in r.error, r.error


def test_execute_many_in_order_on_parallel_workers():
    calls = [("sandbox_tools:weather", {"city": c}) for c in ("Paris", "Atlantis", "Tokyo")]
    calls += [("sandbox_tools:spin", {}), ("bad", {}), ("sandbox_tools:whoami", {}), ("sandbox_tools:whoami", {})]
    with Sandbox(CFG, workers=2) as box:
        rs = box.execute_many(calls)
        assert [r.error_type for r in rs] == [None, "exception", None, "timeout", "bad_call", None, None]
        assert rs[0].output["city"] == "Paris" and rs[2].output["city"] == "Tokyo"
        assert box.execute_many([]) == []
        t0 = time.monotonic()  # both workers are warm: two 0.6 s sleeps overlap
        rs = box.execute_many([("sandbox_tools:sleep", {"seconds": 0.6})] * 2)
        assert time.monotonic() - t0 < 1.15 and len({r.output["pid"] for r in rs}) == 2
    with pytest.raises(SandboxError):
        box.execute("sandbox_tools:whoami", {})


def test_workdir_removed_after_close():
    box = Sandbox(CFG)
    cwd = box.execute("sandbox_tools:whoami", {}).output["cwd"]
    assert Path(cwd).is_dir()
    box.close()
    assert not Path(cwd).exists()
