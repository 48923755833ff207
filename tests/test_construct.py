"""Reversed construction on Ray Data with a real vLLM generator (tiny-random) and the bundled
catalog: every attempted instance is accounted for, and every kept gold call validates
against its schema and executes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest

from ttpa_ray.config import load_job

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_construct_accounts_for_every_row(tiny_model, ray_local, tmp_path: Path):
    from ttpa_ray.construct import run_construct
    from ttpa_ray.tools import bundled_catalog
    from ttpa_ray.tools.sandbox import Sandbox

    job = load_job(ROOT / "jobs/tiny-cpu.yaml", ["construct.num_instances=6", "construct.temperature=0.0"])
    counts = run_construct(job.construct, tmp_path, seed=0)
    assert counts["attempted"] == 6 == counts["rows_out"]
    assert counts["kept"] + counts["errors"] + sum(counts["filtered"].values()) == counts["attempted"]
    kept = pq.read_table(tmp_path / "instances.parquet").to_pylist()
    rejected = pq.read_table(tmp_path / "rejected.parquet").to_pylist()
    assert sorted(r["id"] for r in kept + rejected) == list(range(6))
    assert all(r["reason"] for r in rejected)
    assert len((tmp_path / "instances.jsonl").read_text().splitlines()) == len(kept)

    catalog = {t.name: t for t in bundled_catalog()}
    with Sandbox() as box:
        for r in kept:
            msgs = json.loads(r["messages"])
            calls = [c["function"] for m in msgs for c in m.get("tool_calls", [])]
            assert calls, r["id"]
            for c in calls:
                tool = catalog[c["name"]]
                jsonschema.validate(c["arguments"], tool.openai()["function"]["parameters"])
                assert box.execute(tool.impl, c["arguments"]).ok
