"""Security (issue 8, item 6): hostile tools against the sandbox (tools in sandbox_tools.py), API keys
that never leak, and job configs whose local paths must stay inside the allowed roots.

Complements tests/test_sandbox.py (timeouts, memory caps, absolute/../symlink writes, subprocess,
os.system, os.kill, DNS via getaddrinfo). The one stand-in is a real local HTTP server playing
the cloud API."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ttpa_ray.job import ConfigError, load_job, validate_job
from ttpa_ray.job import allowed_roots
from ttpa_ray.engines.build import build_engine
from ttpa_ray.engines.base import SamplingParams
from test_sandbox import assert_healthy, call
from ttpa_ray.tools.sandbox import Sandbox, SandboxConfig, ToolResult

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT = 1.5
CFG = SandboxConfig(timeout_s=TIMEOUT, memory_mb=512, extra_sys_path=[str(HERE)])
SECRET = "sk-proj-Zq3TtpaSecurityTestSecret0123456789"
KEY_ENV = "TTPA_SECURITY_TEST_KEY"
OUTSIDE = "/ttpa-security-outside"  # in no allowed root (unless the tests run from /)


@pytest.fixture(scope="module")
def sb():
    with Sandbox(CFG) as box:
        yield box


def assert_refused(r: ToolResult, *needles: str) -> None:
    assert r.error_type == "refused" and r.error.startswith("PermissionError: sandbox refused"), r
    for needle in needles:
        assert needle in r.error, r.error


# --------------------------------------------------------------------------- sandbox: network


def test_tcp_connect_to_a_live_listener_is_refused(sb):
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        port = server.getsockname()[1]
        assert_refused(call(sb, "connect_localhost", port=port), "socket.getaddrinfo", "network access is disabled")
        assert_refused(call(sb, "connect_raw", port=port), "socket.__new__", "network access is disabled")
        with pytest.raises(TimeoutError):
            server.accept()  # nothing ever reached the listener
        # Control: the same tools do connect when the network is allowed, so the refusals above are real.
        with Sandbox(SandboxConfig(timeout_s=TIMEOUT, extra_sys_path=[str(HERE)], allow_network=True)) as box:
            for func in ("connect_localhost", "connect_raw"):
                assert box.execute(f"sandbox_tools:{func}", {"port": port}).output == "connected"
                server.accept()[0].close()


def test_unix_socket_connect_to_a_live_listener_is_refused(sb, tmp_path):
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()
        server.settimeout(0.5)
        assert_refused(call(sb, "connect_unix", path=path), "socket.connect")
        with pytest.raises(TimeoutError):
            server.accept()


@pytest.mark.parametrize("func,event", [("resolve", "socket.getaddrinfo"), ("resolve_name", "socket.gethostbyname")])
def test_dns_is_refused_even_for_localhost(sb, func, event):
    assert_refused(call(sb, func, host="localhost"), event)  # resolvable offline: a refusal, not a miss


# --------------------------------------------------------------------------- sandbox: processes


@pytest.mark.parametrize("how,event", [
    ("fork", "os.fork"), ("forkpty", "os.forkpty"), ("execv", "os.exec"), ("posix_spawn", "os.posix_spawn"),
    ("spawnv", "os.fork"), ("popen", "subprocess.Popen"), ("multiprocessing", "_posixsubprocess.fork_exec"),
    ("pidfd_signal", "signal.pidfd_send_signal"),
])
def test_starting_or_signalling_processes_is_refused(sb, how, event):
    pid = call(sb, "whoami").output["pid"]
    assert_refused(call(sb, "start_process", how=how), event)
    assert call(sb, "whoami").output["pid"] == pid  # the worker neither died nor was replaced by an exec


def test_fork_bomb_is_refused_at_the_first_fork(sb):
    assert_refused(call(sb, "fork_bomb"), "os.fork")
    assert_healthy(sb)


# --------------------------------------------------------------------------- sandbox: time and memory


@pytest.mark.parametrize("func", ["stubborn_spin", "hoard_memory"])
def test_tools_that_ignore_signals_and_errors_are_killed(sb, func):
    pid = call(sb, "whoami").output["pid"]
    r = call(sb, func)
    assert r.error_type in ("timeout", "memory") and r.seconds < TIMEOUT + 2, r
    assert_healthy(sb)
    assert call(sb, "whoami").output["pid"] != pid


# --------------------------------------------------------------------------- sandbox: files


@pytest.mark.parametrize("how", ["pathlib", "append", "replace", "copy", "mkstemp", "makedirs", "mkfifo",
                                 "hardlink", "dir_fd", "chdir", "sqlite"])
def test_writes_outside_the_sandbox_directory_are_refused(sb, tmp_path, how):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = victim if how in ("append", "hardlink") else tmp_path / "new"
    assert_refused(call(sb, "escape_write", how=how, target=str(target)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]
    assert victim.read_text() == "keep me"


def test_each_end_of_rename_and_link_is_checked_against_its_own_dir_fd(tmp_path):
    """dst_dir_fd / the link source (unreachable end to end now that outside dir fds are refused)."""
    from ttpa_ray.tools.sandbox import _make_hook

    box = tmp_path / "box"
    box.mkdir()
    hook = _make_hook(str(box.resolve()), allow_network=False)
    inside, outside = os.open(box, os.O_RDONLY), os.open(tmp_path, os.O_RDONLY)
    try:
        hook("os.rename", (str(box / "a"), "b", -1, inside))
        with pytest.raises(PermissionError, match="os.rename"):
            hook("os.rename", (str(box / "a"), "b", -1, outside))
        with pytest.raises(PermissionError, match="os.link"):
            hook("os.link", (str(tmp_path / "victim.txt"), str(box / "hard"), -1, -1))
    finally:
        os.close(inside)
        os.close(outside)


_SECRETS_SCRIPT = """
import json, os, sys
from ttpa_ray.tools.sandbox import Sandbox, SandboxConfig

probes = [("read_env", {"name": "OPENAI_API_KEY"}), ("read_env", {"name": "TTPA_SECURITY_TEST_KEY"}),
          ("read_proc", {"pid": "self"}), ("read_proc", {"pid": "parent"}),
          ("read_proc", {"pid": str(os.getpid())}), ("read_proc", {"pid": str(os.getpid()), "name": "mem"}),
          ("read_proc", {"pid": str(os.getpid()), "via_symlink": True})]
with Sandbox(SandboxConfig(timeout_s=10, extra_sys_path=[sys.argv[1]])) as sb:
    results = [sb.execute("sandbox_tools:" + f, a).__dict__ for f, a in probes]
print(json.dumps({"caller_sees_key": bool(os.environ.get("OPENAI_API_KEY")), "results": results}))
"""


def test_tools_cannot_read_the_callers_secrets():
    """A fresh process holding keys in its environment (the forkserver inherits it) runs the probes."""
    env = os.environ | {"OPENAI_API_KEY": SECRET, KEY_ENV: SECRET}
    proc = subprocess.run([sys.executable, "-c", _SECRETS_SCRIPT, str(HERE)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert SECRET not in proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["caller_sees_key"]
    env_a, env_b, *procs = out["results"]
    for r in (env_a, env_b):
        assert r["ok"] and r["output"]["os.environ"] is None and r["output"]["posix.environ"] is None, r
        assert set(r["output"]["names"]) <= {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"}
    for r in procs:
        assert r["error_type"] == "refused" and "environment or memory" in r["error"], r


# --------------------------------------------------------------------------- API keys


@pytest.fixture()
def echo_api():
    """A stand-in cloud API that echoes the Authorization header it gets: in a 401 error for
    completions, in the reply text for chat."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            auth = self.headers.get("Authorization")
            seen.append(auth)
            if self.path.endswith("/completions") and "chat" not in self.path:
                code, body = 401, {"error": {"message": f"Incorrect API key provided: {auth}"}}
            else:
                code, body = 200, {"choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": f"you sent {auth}"}}]}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


def test_api_key_is_read_from_env_and_never_written_or_logged(echo_api, monkeypatch, caplog, capfd, tmp_path):
    url, seen = echo_api
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)  # requests/urllib3 debug lines too
    job = validate_job({"name": "sec", "output_dir": str(tmp_path), "target": {
        "backend": "openai", "model": "m", "api_base": url, "api_key_env": KEY_ENV}})
    engine = build_engine(job.target)
    gen = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4))[0]
    chat = engine.chat([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=4))[0]
    engine.close()

    assert seen == [f"Bearer {SECRET}"] * 2  # the key does come from the environment variable
    assert gen.error.startswith("RuntimeError: /completions returned HTTP 401") and "<redacted>" in gen.error
    assert chat.error is None and chat.completions[0].text == "you sent Bearer <redacted>"
    job_json = tmp_path / "job.json"
    job_json.write_text(job.model_dump_json(indent=2))  # as run_pipeline writes it
    assert KEY_ENV in job_json.read_text()
    texts = {"job.json": job_json.read_text(), "section sent to actors": json.dumps(job.target.model_dump()),
             "error row": gen.error, "completion": chat.completions[0].text, "repr": repr(engine),
             "str": str(engine), "log": caplog.text, "stdout+stderr": "".join(capfd.readouterr())}
    assert [name for name, text in texts.items() if SECRET in text] == []


def test_key_with_control_characters_is_refused_without_quoting_it(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET + "\nX-Injected: 1")
    with pytest.raises(RuntimeError) as info:
        build_engine(validate_job({"name": "x", "target": {
            "backend": "openai", "model": "m", "api_base": "http://127.0.0.1:9/v1", "api_key_env": KEY_ENV}}).target)
    assert KEY_ENV in str(info.value) and SECRET not in str(info.value)


@pytest.mark.parametrize("engine,field", [
    ({"api_key_env": SECRET}, "target.api_key_env"),
    ({"api_key_env": "hf_Zq3TtpaSecretToken0123456789"}, "target.api_key_env"),  # letters, digits, _ only
    ({"api_key": SECRET}, "target.api_key: unknown key; secrets never go in a job file"),
    ({"token": SECRET}, "target.token: unknown key; secrets never go in a job file"),
    ({"api_base": f"https://user:{SECRET}@api.example.com/v1"}, "target.api_base"),
    ({"api_base": f"https://api.example.com/v1?api_key={SECRET}"}, "target.api_base"),
])
def test_secrets_in_a_job_are_refused_and_not_repeated(engine, field):
    tree = {"name": "x", "target": {"backend": "openai", "model": "m", "api_base": "http://127.0.0.1:9/v1"} | engine}
    with pytest.raises(ConfigError) as info:
        validate_job(tree)
    text = str(info.value)
    assert field in text
    assert "Zq3Ttpa" not in text  # neither the key nor the URL holding it is echoed


def test_secret_given_as_a_cli_override_is_refused_and_not_repeated():
    with pytest.raises(ConfigError) as info:
        load_job(ROOT / "jobs/demo-cpu.yaml", [f"construct.generator.api_key={SECRET}"])
    assert "construct.generator.api_key: unknown key; secrets never go" in str(info.value)
    assert SECRET not in str(info.value)


# --------------------------------------------------------------------------- paths


def test_paths_inside_the_default_roots_and_remote_storage_are_accepted(tmp_path, monkeypatch):
    validate_job({"name": "x"})  # output_dir "runs": relative to the working directory
    cache = allowed_roots(validate_job({"name": "x"}))[1]
    monkeypatch.chdir(tmp_path)  # from here on the checkout is not the working directory
    job = validate_job({
        "name": "x", "output_dir": str(tmp_path / "runs"),
        "target": {"backend": "vllm", "model": str(cache / "models" / "tiny-random")},
        "construct": {"catalog": "bundled", "generator": {"backend": "openai", "model": "org/name-on-the-server",
                                                          "api_base": "http://127.0.0.1:9/v1"}},
        "train": {"model": "tiny-random", "storage_path": "s3://bucket/ckpt"},
        "score": {"catalog": "catalog.jsonl"}})
    assert job.train.storage_path == "s3://bucket/ckpt"
    validate_job({"name": "x", "train": {"storage_path": "gs://bucket/ckpt"}})
    # The working directory is a root only while it is the working directory (temp and cache
    # moved away, so the check holds wherever the checkout and the temp dir are).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "other-tmp"))
    monkeypatch.setenv("TTPA_CACHE_DIR", str(tmp_path / "other-cache"))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    validate_job({"name": "x", "output_dir": str(tmp_path / "one" / "runs")})
    monkeypatch.chdir(tmp_path / "two")
    with pytest.raises(ConfigError, match="output_dir"):  # the old working directory is no longer a root
        validate_job({"name": "x", "output_dir": str(tmp_path / "one" / "runs")})


def _outside_via_symlink(tmp_path: Path) -> str:
    (tmp_path / "innocent").symlink_to(OUTSIDE)
    return str(tmp_path / "innocent" / "runs")


@pytest.mark.parametrize("field,tree", [
    ("output_dir", {"output_dir": f"{OUTSIDE}/runs"}),
    ("output_dir", {"output_dir": os.path.relpath(f"{OUTSIDE}/runs")}),  # ../../ttpa-security-outside/runs
    ("output_dir", {"output_dir": "<symlink>"}),
    ("target.model", {"target": {"model": f"{OUTSIDE}/models/m"}}),
    ("target.tokenizer", {"target": {"backend": "openai", "model": "m", "api_base": "http://127.0.0.1:9/v1",
                                     "tokenizer": f"{OUTSIDE}/tok"}}),
    ("construct.generator.model", {"construct": {"generator": {"model": f"{OUTSIDE}/gen"}}}),
    ("train.model", {"train": {"model": f"{OUTSIDE}/start"}}),
    ("construct.catalog", {"construct": {"catalog": f"{OUTSIDE}/tools.jsonl"}}),
    ("score.catalog", {"score": {"catalog": f"{OUTSIDE}/tools.jsonl"}}),
    ("train.storage_path", {"train": {"storage_path": f"{OUTSIDE}/ckpt"}}),
    ("train.storage_path", {"train": {"storage_path": f"file://{OUTSIDE}/ckpt"}}),
])
def test_paths_outside_the_allowed_roots_are_rejected(tmp_path, field, tree):
    if tree.get("output_dir") == "<symlink>":
        tree = {"output_dir": _outside_via_symlink(tmp_path)}
    with pytest.raises(ConfigError) as info:
        validate_job({"name": "x", **tree})
    [problem] = info.value.problems
    assert problem.startswith(f"{field}: ") and f"resolves to {OUTSIDE}/" in problem, problem
    assert "allowed_paths: [" in problem  # names the fix


def test_allowed_paths_adds_a_root_but_dotdot_still_escapes_it():
    job = validate_job({"name": "x", "allowed_paths": [OUTSIDE], "output_dir": f"{OUTSIDE}/runs",
                        "target": {"model": f"{OUTSIDE}/models/m"}})
    assert Path(OUTSIDE) in allowed_roots(job)
    with pytest.raises(ConfigError, match="output_dir: .* resolves to /etc"):
        validate_job({"name": "x", "allowed_paths": [OUTSIDE], "output_dir": f"{OUTSIDE}/../etc"})


def test_every_path_problem_is_listed_at_once_and_the_name_cannot_escape():
    with pytest.raises(ConfigError) as info:
        validate_job({"name": "x", "output_dir": OUTSIDE, "train": {"model": f"{OUTSIDE}/m",
                                                                    "storage_path": f"{OUTSIDE}/c"}})
    assert [p.split(":")[0] for p in info.value.problems] == ["output_dir", "train.model", "train.storage_path"]
    with pytest.raises(ConfigError, match="name: name is also the run folder name"):
        validate_job({"name": "../../etc"})
