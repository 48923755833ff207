"""Cluster configs (``cluster/``) and the GPU job they are sized for.

The Ray autoscaler YAMLs are validated with Ray's own JSON schema from the installed wheel and
with the steps ``ray up`` runs before it contacts a cloud; the KubeRay manifests against the
ray.io/v1 field names; the GPU job's numbers (ranks, tensor parallelism, pools, memory) against
the nodes the cluster files provide. Pure: no Ray started, no cloud reached.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from ttpa_ray.config import JobConfig, PoolConfig
from ttpa_ray.job import load_job

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
AUTOSCALER = {p.stem: p for p in (CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml")}
GPU_JOB = ROOT / "jobs" / "qwen2.5-7b-gpu.yaml"
SHARED = "/mnt/shared"

# GPU memory (GB) of the instance types the autoscaler YAMLs use for training.
GPU_MEMORY_GB = {"p4de.24xlarge": 80, "a2-ultragpu-8g": 80}
# Parameter counts of the models the GPU job points at (from their config.json).
MODEL_PARAMS = {"Qwen2.5-7B-Instruct": 7.62e9, "Qwen2.5-72B-Instruct": 72.7e9}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ray_pin() -> str:
    pins = [d for d in _pyproject()["project"]["dependencies"] if d.startswith("ray[")]
    assert len(pins) == 1, pins
    return pins[0].split("==")[1]


def _schema_errors(config: dict[str, Any]) -> list[str]:
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(config)]


def _gpu_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in config["available_node_types"].items() if v["resources"].get("GPU", 0) > 0}


def _training_type(config: dict[str, Any]) -> dict[str, Any]:
    enabled = [v for v in _gpu_types(config).values() if v.get("max_workers", 0) > 0]
    assert len(enabled) == 1, (
        "exactly one GPU node type may be enabled (max_workers > 0): job pools and Ray Train ask for "
        "'GPU' without a GPU type, so the autoscaler could put training ranks on any enabled type")
    return enabled[0]


def _instance_type(node_config: dict[str, Any]) -> str:
    return node_config.get("InstanceType") or node_config["machineType"]


def _head_start(config: dict[str, Any]) -> list[str]:
    commands = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert len(commands) == 1, commands
    return shlex.split(commands[0].replace(";", " ; "))


def _flag(tokens: list[str], name: str) -> str | None:
    for i, tok in enumerate(tokens):
        if tok == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------- Ray autoscaler YAMLs


@pytest.mark.parametrize("name", sorted(AUTOSCALER))
def test_autoscaler_config_validates_with_rays_schema(name: str):
    config = _yaml(AUTOSCALER[name])
    assert _schema_errors(config) == []
    # What `ray up` does before it talks to the cloud: merge the provider defaults, validate.
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("mutate, where", [
    (lambda c: c["available_node_types"]["head_cpu"].update(min_worker=0), "available_node_types.head_cpu"),
    (lambda c: c.update(head_start_commands=[]), "<root>"),
    (lambda c: c["available_node_types"]["gpu_8x_a100"]["resources"].update(GPU=7.5),
     "available_node_types.gpu_8x_a100.resources.GPU"),
    (lambda c: c["docker"].update(imagee="x"), "docker"),
])
def test_schema_validation_catches_mistakes(mutate, where: str):
    config = _yaml(AUTOSCALER["aws"])
    mutate(config)
    errors = _schema_errors(config)
    assert any(e.startswith(where + ":") for e in errors), errors


@pytest.mark.parametrize("name", sorted(AUTOSCALER))
def test_dashboard_listens_on_loopback_only(name: str):
    config = _yaml(AUTOSCALER[name])
    tokens = _head_start(config)
    assert "--head" in tokens
    assert _flag(tokens, "--dashboard-host") == "127.0.0.1", "reach the dashboard through `ray dashboard` (ssh)"
    assert "0.0.0.0" not in AUTOSCALER[name].read_text()
    # The driver runs on the CPU head and ships its environment to the GPU workers (runtime.py).
    assert "DS_ACCELERATOR=cuda" in tokens
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("CPU") == 0


@pytest.mark.parametrize("name", sorted(AUTOSCALER))
def test_every_node_installs_the_synced_checkout_with_the_gpu_extra(name: str):
    config = prepare_config(copy.deepcopy(_yaml(AUTOSCALER[name])))  # merges setup_commands into head/worker
    synced = {remote for remote, local in config["file_mounts"].items() if local == "."}
    assert synced, "file_mounts must sync the checkout ('.')"
    extras = _pyproject()["project"]["optional-dependencies"]
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [re.search(r"cd (\S+) && pip install .*-e '\.\[(\w+)\]'", c) for c in config[key]]
        installs = [m for m in installs if m]
        assert len(installs) == 1, config[key]
        assert installs[0].group(1) in synced and installs[0].group(2) == "gpu" and "gpu" in extras
        assert not any("[cpu" in c for c in config[key])


@pytest.mark.parametrize("name", sorted(AUTOSCALER))
def test_images_carry_the_pinned_ray_and_python(name: str):
    docker = _yaml(AUTOSCALER[name])["docker"]
    version = _ray_pin()
    assert version == ray.__version__
    assert docker["image"] == f"rayproject/ray:{version}-py311-gpu"
    assert docker["head_image"] == f"rayproject/ray:{version}-py311-cpu"
    assert ">=3.11,<3.12" in _pyproject()["project"]["requires-python"]
    assert f"FROM rayproject/ray:{version}-py311-gpu" in (CLUSTER / "Dockerfile").read_text()


@pytest.mark.parametrize("name", sorted(AUTOSCALER))
def test_shared_filesystem_is_mounted_everywhere_the_job_reads(name: str):
    config = _yaml(AUTOSCALER[name])
    assert f"--volume {SHARED}:{SHARED}" in config["docker"]["run_options"]
    assert any(c.rstrip().endswith(f" {SHARED}") and "mount " in c for c in config["initialization_commands"])
    job = load_job(GPU_JOB)
    for path in (job.output_dir, job.target.model, job.construct.generator.model):
        assert path.startswith(SHARED + "/"), path


@pytest.mark.parametrize("name", sorted(AUTOSCALER))
def test_one_gpu_type_enabled_within_the_global_cap(name: str):
    config = _yaml(AUTOSCALER[name])
    training = _training_type(config)
    assert training.get("min_workers", 0) <= training["max_workers"] <= config["max_workers"]


# --------------------------------------------------------------------------- the GPU job vs the nodes


def _cluster_shapes() -> dict[str, tuple[int, int, int]]:
    """(nodes, GPUs per node, CPUs per node) of the training nodes each cluster file offers."""
    shapes = {}
    for name, path in AUTOSCALER.items():
        t = _training_type(_yaml(path))
        shapes[name] = (t["max_workers"], t["resources"]["GPU"], t["resources"]["CPU"])
    group = _gpu_group(_yaml(KUBERAY / "raycluster.yaml"))
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    shapes["kuberay"] = (group["maxReplicas"], int(limits["nvidia.com/gpu"]), int(limits["cpu"]))
    return shapes


def _gpu_pools(job: JobConfig) -> dict[str, tuple[PoolConfig, int | None]]:
    """GPU actor pools of the job and their vLLM tensor parallel degree (None: not vLLM)."""
    pools = {"target": (job.target.pool, job.target.tensor_parallel_size),
             "construct.generator": (job.construct.generator.pool, job.construct.generator.tensor_parallel_size),
             "reference": (job.reference.pool, None)}
    return {k: v for k, v in pools.items() if v[0].num_gpus > 0}


@pytest.mark.parametrize("cluster", ["aws", "gcp", "kuberay"])
def test_gpu_job_fits_the_cluster(cluster: str):
    nodes, gpus, cpus = _cluster_shapes()[cluster]
    job = load_job(GPU_JOB)
    train = job.train
    assert train.use_gpu and train.dtype == "bfloat16" and train.zero_stage == 3
    assert train.num_workers == nodes * gpus, "one Ray Train rank per GPU of the training nodes"
    assert train.cpus_per_worker * gpus <= cpus, "a node's ranks must fit its CPUs"
    assert train.storage_path and train.storage_path.split("://")[0] in ("s3", "gs")
    pools = _gpu_pools(job)
    assert set(pools) == {"target", "construct.generator", "reference"}
    for where, (pool, tp) in pools.items():
        assert pool.num_gpus == int(pool.num_gpus) >= 1, where
        if tp is not None:
            assert pool.num_gpus == tp, f"{where}: a vLLM engine needs tensor_parallel_size GPUs"
        assert gpus % pool.num_gpus == 0, f"{where}: engines must tile a node (TP within one node)"
        assert pool.max_actors * pool.num_gpus <= nodes * gpus, where
        assert (gpus // pool.num_gpus) * pool.num_cpus <= cpus, f"{where}: a node's actors must fit its CPUs"
        assert pool.min_actors == pool.max_actors, f"{where}: fixed-size, so the autoscaler sees the whole demand"


@pytest.mark.parametrize("name", sorted(AUTOSCALER))
def test_gpu_memory_arithmetic(name: str):
    node_config = _training_type(_yaml(AUTOSCALER[name]))["node_config"]
    gpu_gb = GPU_MEMORY_GB[_instance_type(node_config)]
    job = load_job(GPU_JOB)
    for engine in (job.target, job.construct.generator):
        params = MODEL_PARAMS[Path(engine.model).name]
        weights_gb = params * 2 / engine.tensor_parallel_size / 1e9  # bf16
        budget_gb = engine.gpu_memory_utilization * gpu_gb
        assert weights_gb <= 0.6 * budget_gb, f"{engine.model}: leave >= 40% of the budget for the KV cache"
    params = MODEL_PARAMS[Path(job.train.model or job.target.model).name]
    states_gb = 16 * params / job.train.num_workers / 1e9  # ZeRO-3: bf16 weights + grads, fp32 Adam
    assert states_gb <= 0.25 * gpu_gb, "model states must leave most of the GPU to activations"


# --------------------------------------------------------------------------- KubeRay

# The ray.io/v1 fields these manifests use, written from KubeRay's Go types (RayClusterSpec,
# HeadGroupSpec, WorkerGroupSpec, RayJobSpec): unknown keys and missing required ones fail.
_POD_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object"}}}
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
RAY_CLUSTER_SPEC = {
    "type": "object", "additionalProperties": False, "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {"type": "object", "additionalProperties": False, "properties": {
            "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
            "idleTimeoutSeconds": {"type": "integer"}, "resources": {"type": "object"},
            "env": {"type": "array"}, "image": {"type": "string"}}},
        "headGroupSpec": {"type": "object", "additionalProperties": False, "required": ["rayStartParams", "template"],
                          "properties": {"rayStartParams": _START_PARAMS, "template": _POD_TEMPLATE,
                                         "serviceType": {"type": "string"}, "enableIngress": {"type": "boolean"},
                                         "headService": {"type": "object"}}},
        "workerGroupSpecs": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
            "properties": {"groupName": {"type": "string"}, "replicas": {"type": "integer", "minimum": 0},
                           "minReplicas": {"type": "integer", "minimum": 0},
                           "maxReplicas": {"type": "integer", "minimum": 0},
                           "idleTimeoutSeconds": {"type": "integer"}, "numOfHosts": {"type": "integer"},
                           "rayStartParams": _START_PARAMS, "template": _POD_TEMPLATE}}},
    },
}
RAY_JOB_SPEC = {
    "type": "object", "additionalProperties": False, "required": ["entrypoint"],
    "properties": {
        "entrypoint": {"type": "string"}, "clusterSelector": {"type": "object"},
        "rayClusterSpec": RAY_CLUSTER_SPEC, "runtimeEnvYAML": {"type": "string"},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
        "submitterConfig": {"type": "object", "additionalProperties": False,
                            "properties": {"backoffLimit": {"type": "integer"}}},
        "shutdownAfterJobFinishes": {"type": "boolean"}, "ttlSecondsAfterFinished": {"type": "integer"},
        "activeDeadlineSeconds": {"type": "integer"}, "backoffLimit": {"type": "integer"},
        "jobId": {"type": "string"}, "metadata": {"type": "object"},
    },
}


def _gpu_group(cluster: dict[str, Any]) -> dict[str, Any]:
    groups = cluster["spec"]["workerGroupSpecs"]
    assert len(groups) == 1, "one GPU worker group (see the autoscaler YAMLs on mixing GPU types)"
    return groups[0]


def _containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    templates = [cluster["spec"]["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    return [c for t in templates for c in t["spec"]["containers"]]


def _quantity_bytes(q: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", q)
    assert m, q
    return float(m.group(1)) * units.get(m.group(2) or "", 1)


def test_kuberay_manifests_match_ray_io_v1():
    cluster, job = _yaml(KUBERAY / "raycluster.yaml"), _yaml(KUBERAY / "rayjob.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    jsonschema.validate(cluster["spec"], RAY_CLUSTER_SPEC)
    jsonschema.validate(job["spec"], RAY_JOB_SPEC)
    typo = copy.deepcopy(cluster["spec"])
    typo["workerGroupSpecs"][0]["maxReplica"] = typo["workerGroupSpecs"][0].pop("maxReplicas")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, RAY_CLUSTER_SPEC)


def test_raycluster_autoscales_gpu_pods_behind_a_private_head():
    cluster = _yaml(KUBERAY / "raycluster.yaml")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == _ray_pin()
    group = _gpu_group(cluster)
    assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    worker = group["template"]["spec"]["containers"][0]["resources"]
    assert worker["limits"]["nvidia.com/gpu"] == worker["requests"]["nvidia.com/gpu"]
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    assert {"name": "DS_ACCELERATOR", "value": "cuda"} in head_container["env"]
    # /dev/shm holds the object store.
    shm = {v["name"]: v for v in group["template"]["spec"]["volumes"]}["dshm"]["emptyDir"]
    assert shm["medium"] == "Memory"
    assert _quantity_bytes(shm["sizeLimit"]) >= int(group["rayStartParams"]["object-store-memory"])


def test_raycluster_pods_share_image_volume_and_identity():
    cluster = _yaml(KUBERAY / "raycluster.yaml")
    prereqs = {d["kind"]: d for d in yaml.safe_load_all((KUBERAY / "prerequisites.yaml").read_text()) if d}
    pvc = prereqs["PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    version = _pyproject()["project"]["version"]
    images = {c["image"] for c in _containers(cluster)}
    assert len(images) == 1 and next(iter(images)).endswith(f"/ttpa-ray:{version}")
    assert f"-t {next(iter(images))} ." in (CLUSTER / "Dockerfile").read_text().splitlines()[0]
    templates = [cluster["spec"]["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    for t in templates:
        assert t["spec"]["serviceAccountName"] == prereqs["ServiceAccount"]["metadata"]["name"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in t["spec"]["volumes"]
                  if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in t["spec"]["containers"][0]["volumeMounts"]}
        assert claims[mounts[SHARED]] == pvc["metadata"]["name"]


def test_rayjob_runs_a_shipped_job_on_the_raycluster():
    cluster, job = _yaml(KUBERAY / "raycluster.yaml"), _yaml(KUBERAY / "rayjob.yaml")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    parts = [shlex.split(p) for p in job["spec"]["entrypoint"].split("&&")]
    assert len(parts) == 2 and parts[0][0] == "cd", parts
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"WORKDIR {parts[0][1]}" in dockerfile and f". {parts[0][1]}\n" in dockerfile
    command = parts[1]
    assert command[:2] == ["ttpa", "run"] and re.fullmatch(r"jobs/[\w.\-]+\.yaml", command[2]), command
    overrides = command[3:]
    loaded = load_job(ROOT / command[2], overrides)  # exists and validates, overrides included
    assert loaded.ray.address == "auto"
    assert ROOT / command[2] == GPU_JOB


# --------------------------------------------------------------------------- placeholders


def test_every_placeholder_is_documented():
    files = [p for p in CLUSTER.rglob("*") if p.is_file() and p.name != "README.md"] + [GPU_JOB]
    found = {m for p in files for m in re.findall(r"REPLACE_ME_[A-Z0-9_]+", p.read_text())}
    assert found, "the cluster files name their placeholders REPLACE_ME_*"
    readme = (CLUSTER / "README.md").read_text()
    assert sorted(p for p in found if p not in readme) == []


def _node_ram_bytes(cluster: str) -> float:
    """RAM of one GPU node: the pod limit (KubeRay) or the RAM line of the cluster file's header."""
    if cluster == "kuberay":
        limits = _gpu_group(_yaml(KUBERAY / "raycluster.yaml"))["template"]["spec"]["containers"][0]["resources"]
        return _quantity_bytes(limits["limits"]["memory"])
    import re

    m = re.search(r"RAM\s+(\d+) (GiB|GB) per GPU node", AUTOSCALER[cluster].read_text())
    assert m, f"{cluster}: the header's RAM line is missing"
    return int(m.group(1)) * (2**30 if m.group(2) == "GiB" else 1e9)


# Parameters of the job's models (from their config.json: Qwen2.5-7B-Instruct, Qwen2.5-72B-Instruct);
# the folders live on the cluster's shared storage, not here.
GPU_JOB_PARAMS = {"target": 7.62e9, "construct.generator": 72.7e9, "reference": 7.62e9, "train": 7.62e9}


@pytest.mark.parametrize("cluster", ["aws", "gcp", "kuberay"])
def test_gpu_job_memory_requests_fit_a_node(cluster: str):
    """Every actor asks Ray for memory (ttpa_ray/resources.py); the actors of one stage that
    share a node must fit the memory Ray offers there (70% of RAM by default; the object store
    takes the rest)."""
    from ttpa_ray import resources as rs

    nodes, gpus, _ = _cluster_shapes()[cluster]
    offered = 0.7 * _node_ram_bytes(cluster)
    job = load_job(GPU_JOB)
    per_node = {}
    for where, (pool, _tp) in _gpu_pools(job).items():
        n = int(GPU_JOB_PARAMS[where])
        if where == "reference":
            one = rs.reference_memory_bytes(n, "bfloat16", use_gpu=True)
        else:
            eng = job.target if where == "target" else job.construct.generator
            one = rs.engine_memory_bytes(eng.backend, n, "bfloat16", eng.kv_cache_gib, use_gpu=True)
        per_node[where] = one * (gpus // int(pool.num_gpus))
    t = job.train
    per_node["train"] = gpus * rs.train_worker_memory_bytes(int(GPU_JOB_PARAMS["train"]), "bfloat16", t.zero_stage,
                                                            t.num_workers, t.offload_optimizer or t.offload_params,
                                                            use_gpu=True)
    too_big = {k: f"{v / 2**30:.0f} GiB" for k, v in per_node.items() if v > offered}
    assert not too_big, f"{cluster}: more than the {offered / 2**30:.0f} GiB Ray offers per node: {too_big}"
