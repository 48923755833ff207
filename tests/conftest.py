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
    from ttpa_ray.models import resolve

    return resolve("tiny-random")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from ttpa_ray.models import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from ttpa_ray.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
