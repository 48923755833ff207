"""Several Ray nodes on one machine (ray.cluster_utils.Cluster, 1 CPU each): actor pools
spread over both nodes, and a generator actor SIGKILLed mid-construction is restarted by Ray
Data with its batch retried, so rows in = rows out + counted errors.

(Ray Train workers spread over two nodes and a killed training worker: tests/test_train.py.)
"""

from __future__ import annotations

import json

import pytest

from conftest import actor_nodes, actor_resources
from test_score_stage import GOLD, TOOLS
from ttpa_ray.config import ConstructConfig, ScoreConfig

pytestmark = pytest.mark.slow


def _nodes(cluster) -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_scoring_pool_spreads_over_two_nodes_and_keeps_every_row(ray_two_nodes):
    import ray

    from ttpa_ray.score.stage import score_dataset

    rows = []
    for i in range(300):
        city = "Paris" if i % 3 else "Rome"
        rows.append({"id": i, "tools_json": json.dumps(TOOLS), "gold_json": json.dumps(GOLD),
                     "prediction": f'<tool_call>{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}</tool_call>',
                     "possible_answer_json": None})
    rows.append({"id": 300, "tools_json": "[not json", "gold_json": "[]", "prediction": "", "possible_answer_json": None})
    # One CPU per actor on one-CPU nodes: the two scoring actors cannot share a node.
    cfg = ScoreConfig(pool={"min_actors": 2, "max_actors": 2, "num_cpus": 1, "batch_size": 32})
    out = score_dataset(ray.data.from_items(rows, override_num_blocks=10), cfg).take_all()
    assert sorted(r["id"] for r in out) == list(range(301))
    by_id = {r["id"]: r for r in out}
    assert all(by_id[i]["valid"] == bool(i % 3) for i in range(300))
    assert all(list(by_id[i]["errors"]) == ([] if i % 3 else ["value_error"]) for i in range(300))
    assert by_id[300]["score_error"].startswith("JSONDecodeError") and not by_id[300]["valid"]
    scorers = actor_nodes("ScoreBatch")
    assert {a["node"] for a in scorers.values()} == _nodes(ray_two_nodes), scorers
    from ttpa_ray.resources import scorer_memory_bytes

    requested = actor_resources("ScoreBatch")  # what the scheduler placed them by
    assert requested and all(r == {"CPU": 1.0, "memory": float(scorer_memory_bytes())} for r in requested.values())


def test_killed_generator_actor_is_replaced_and_every_row_accounted(ray_two_nodes, tiny_model, tmp_path,
                                                                  monkeypatch):
    """Two generator engine actors (transformers backend: it starts in seconds; the vLLM
    actor pool is covered in test_engines.py), one per node; the first batch's actor SIGKILLs
    itself after the scenario step (faults.KILL_ENGINE_ACTOR). Ray Data restarts it and
    retries the batch."""
    from ttpa_ray import faults
    from ttpa_ray.construct.stage import run_construct

    marker = tmp_path / "engine-killed"
    monkeypatch.setenv(faults.KILL_ENGINE_ACTOR, str(marker))
    pool = {"min_actors": 2, "max_actors": 2, "num_cpus": 1, "batch_size": 1}
    cfg = ConstructConfig(num_instances=4, mix={"single": 1, "multiple": 0, "parallel": 0, "parallel_multiple": 0,
                                                "irrelevance": 0}, distractors=[0, 1], turns=1,
                          max_tokens={"scenario": 16, "call": 24, "simulate": 16, "answer": 16, "query": 16},
                          generator={"backend": "transformers", "model": "tiny-random", "dtype": "float32",
                                     "max_model_len": 1024, "pool": pool})
    counts = run_construct(cfg, tmp_path / "construct", seed=0)
    assert marker.is_file() and "construct batch" in marker.read_text()  # the fault fired, once
    assert counts["attempted"] == 4 == counts["rows_out"]
    assert counts["rows_out"] == counts["kept"] + counts["errors"] + sum(counts["filtered"].values())
    import pyarrow.parquet as pq

    ids = [r["id"] for f in ("instances", "rejected") for r in pq.read_table(tmp_path / "construct" / f"{f}.parquet").to_pylist()]
    assert sorted(ids) == [0, 1, 2, 3]  # none lost, none duplicated by the retry
    engines = actor_nodes("ConstructBatch")
    assert {a["node"] for a in engines.values()} == _nodes(ray_two_nodes), engines
    assert sum(a["restarts"] for a in engines.values()) >= 1, engines
