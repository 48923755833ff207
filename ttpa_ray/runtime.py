"""Process environment shared by the driver and every Ray worker.

Everything expensive is cached under one folder (``TTPA_CACHE_DIR``, default
``~/.cache/ttpa_ray``; the Makefile points it at ``./.cache`` in the checkout): converted
models, downloaded wheels, DeepSpeed's JIT-built ops, vLLM's cache. Nothing is ever fetched
from a model hub: ``HF_HUB_OFFLINE=1`` is set before transformers is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

from ttpa_ray.console import quiet_env, quiet_ray_data


def cache_dir() -> Path:
    root = os.environ.get("TTPA_CACHE_DIR") or str(Path.home() / ".cache" / "ttpa_ray")
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def worker_env() -> dict[str, str]:
    """Environment variables every process of a job needs (also sent to Ray workers)."""
    cache = cache_dir()
    env = {
        "TTPA_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(cache / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
        # vLLM: in-process engine (starts in seconds, lives inside a Ray actor), files in the cache.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "VLLM_RPC_BASE_PATH": str(cache / "vllm-rpc"),
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_LOGGING_LEVEL": "ERROR",  # its per-step INFO/WARNING lines drown the progress; override to debug
        "DO_NOT_TRACK": "1",
        # DeepSpeed: JIT-built ops are cached so CI and reruns reuse them.
        "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions"),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray Train tees a worker's print to stdout and to its logger: every line twice.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }
    env |= quiet_env()
    # Values the user set explicitly win.
    return {k: os.environ.get(k, v) for k, v in env.items()}


def setup_env() -> dict[str, str]:
    """Export :func:`worker_env` into this process (idempotent) and return it.

    DeepSpeed's accelerator is decided here, per process, by what this machine has; it is not
    sent to workers (a CPU head would force the CPU accelerator on GPU nodes). Training
    workers set it from ``train.use_gpu``.
    """
    env = worker_env()
    os.environ.update(env)
    if not _has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    Path(env["VLLM_RPC_BASE_PATH"]).mkdir(parents=True, exist_ok=True)
    return env


def set_heap_mmap_threshold(kb: int) -> bool:
    """glibc malloc: serve host allocations of at least ``kb`` KiB with pages of their own (mmap),
    returned to the system on free; ``kb = 0`` leaves glibc's default. True if it was set.

    glibc's default threshold is dynamic: each freed mmapped block raises it (up to 32 MiB), so
    a training step's activations soon come from the heap, whose freed middle is never given
    back, and RSS keeps what the step's peak used. A fixed threshold also fixes the trim
    threshold (glibc ties the two). Other C libraries (musl, macOS) are left alone (False)."""
    import platform

    if kb <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    m_mmap_threshold = -3  # malloc.h
    return ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, kb * 1024) == 1


def _has_cuda() -> bool:
    # Cheap check that does not import torch: a CUDA driver exposes /proc/driver/nvidia.
    return Path("/proc/driver/nvidia").exists() or bool(os.environ.get("CUDA_VISIBLE_DEVICES"))


def init_ray(address: str | None = None, num_cpus: int | None = None, include_dashboard: bool = False) -> None:
    """Start (or join) Ray with the job environment in every worker.

    With no address, a job launched by ``ray job submit`` (RAY_ADDRESS set by Ray) joins
    its cluster; anywhere else a local Ray is started with ``num_cpus``.
    """
    import ray

    env = setup_env()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"runtime_env": {"env_vars": env, "worker_process_setup_hook": "ttpa_ray.console.setup_worker"},
                    "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": a Ray of our own, even when another cluster runs on this machine.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=include_dashboard, **kwargs)
    quiet_ray_data()
