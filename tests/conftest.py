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
    pids = actor_pids()
    ray.shutdown()
    reap(pids)


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
    pids = actor_pids()
    ray.shutdown()
    cluster.shutdown()
    reap(pids)


def actor_table() -> list:
    """Every actor (alive or dead) as Ray's GCS actor table holds it (``ActorTableData``)."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    raw = state._connect_and_get_accessor().get_actor_table(None, None)
    return [gcs_pb2.ActorTableData.FromString(r) for r in raw]


def actor_pids() -> list[int]:
    """The process ids of the cluster's live actors."""
    from ray.core.generated import gcs_pb2

    return [a.pid for a in actor_table() if a.pid and a.state == gcs_pb2.ActorTableData.ALIVE]


def reap(pids: list[int], grace_s: float = 10.0) -> None:
    """After a cluster's shutdown: SIGKILL any of its actor processes still alive after
    ``grace_s`` (a Ray Train controller has outlived its cluster and kept running after the
    suite), so no test leaves a process behind."""
    import signal
    import time

    deadline = time.monotonic() + grace_s
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def actor_nodes(class_name_part: str) -> dict[str, dict]:
    """Actors (alive or dead) whose class name contains the text: actor id -> {node, restarts, state}."""
    import ray

    return {aid: {"node": a["Address"]["NodeID"], "restarts": a["NumRestarts"], "state": a["State"]}
            for aid, a in ray._private.state.actors().items() if class_name_part in (a["ActorClassName"] or "")}


def actor_resources(class_name_part: str) -> dict[str, dict[str, float]]:
    """Actors (alive or dead) whose class name contains the text: actor id -> the resources it
    requested, as Ray's GCS actor table holds them (what the scheduler placed it by)."""
    out = {}
    for a in actor_table():
        if class_name_part in a.class_name:
            # In a placement group (Ray Train) a resource shows as e.g. memory_group_<pg id>.
            res: dict[str, float] = {}
            for k, v in a.required_resources.items():
                base = k.split("_group_")[0]
                res[base] = max(res.get(base, 0.0), v)
            out[a.actor_id.hex()] = res
    return out
