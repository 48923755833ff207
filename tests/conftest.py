"""Shared fixtures. Models are prepared once into the project cache (TTPA_CACHE_DIR, set by
the Makefile to ./.cache); Ray is started once per test module that needs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TTPA_CACHE_DIR", str(ROOT / ".cache"))

from ttpa_ray.runtime import setup_env  # noqa: E402

setup_env()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from ttpa_ray.models.registry import resolve

    return resolve("tiny-random")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from ttpa_ray.models.registry import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from ttpa_ray.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_two_nodes():
    """A two-node Ray cluster on this machine (ray.cluster_utils.Cluster), 1 CPU per node, so
    work asking for a CPU or spread placement lands on both nodes."""
    import ray
    from ray.cluster_utils import Cluster

    from ttpa_ray.runtime import init_ray

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    init_ray(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def actor_nodes(class_name_part: str) -> dict[str, dict]:
    """Actors (alive or dead) whose class name contains the text: actor id -> {node, restarts, state}."""
    import ray

    return {aid: {"node": a["Address"]["NodeID"], "restarts": a["NumRestarts"], "state": a["State"]}
            for aid, a in ray._private.state.actors().items() if class_name_part in (a["ActorClassName"] or "")}


def actor_resources(class_name_part: str) -> dict[str, dict[str, float]]:
    """Actors (alive or dead) whose class name contains the text: actor id -> the resources it
    requested, as Ray's GCS actor table holds them (what the scheduler placed it by)."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    out = {}
    for raw in state._connect_and_get_accessor().get_actor_table(None, None):
        a = gcs_pb2.ActorTableData.FromString(raw)
        if class_name_part in a.class_name:
            # In a placement group (Ray Train) a resource shows as e.g. memory_group_<pg id>.
            res: dict[str, float] = {}
            for k, v in a.required_resources.items():
                base = k.split("_group_")[0]
                res[base] = max(res.get(base, 0.0), v)
            out[a.actor_id.hex()] = res
    return out
