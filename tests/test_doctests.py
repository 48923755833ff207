"""The examples in the pure modules' docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["ttpa_ray.toolcall", "ttpa_ray.score.esm", "ttpa_ray.sample.tps", "ttpa_ray.train.losses",
                                  "ttpa_ray.columns", "ttpa_ray.instances", "ttpa_ray.resources",
                                  "ttpa_ray.models.registry", "ttpa_ray.construct.grounding",
                                  "ttpa_ray.construct.templates", "ttpa_ray.construct.steps", "ttpa_ray.construct.twins", "ttpa_ray.console",
                                  "ttpa_ray.train.packed_attention"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
