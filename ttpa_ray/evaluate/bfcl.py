"""BFCL data (questions, function docs, possible answers) read from the ``bfcl-eval`` wheel.

The wheel is downloaded once with ``pip download --no-deps`` and extracted into the cache;
its heavy dependencies (which conflict with the vLLM stack) are never installed.

    entries = load_category("simple_python")   # [{"id", "question", "function", "possible_answer"}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ttpa_ray.assets import extract_prefix, fetch_wheel
from ttpa_ray.runtime import cache_dir

PACKAGE, VERSION = "bfcl-eval", "2026.3.23"
CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")


def data_dir() -> Path:
    target = cache_dir() / "bfcl" / VERSION
    return extract_prefix(fetch_wheel(PACKAGE, VERSION), "bfcl_eval/data/", target)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_category(category: str) -> list[dict[str, Any]]:
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; supported: {', '.join(CATEGORIES)}")
    root = data_dir()
    entries = _jsonl(root / f"BFCL_v4_{category}.json")
    answer_file = root / "possible_answer" / f"BFCL_v4_{category}.json"
    answers = {a["id"]: a["ground_truth"] for a in _jsonl(answer_file)} if answer_file.is_file() else {}
    for e in entries:
        # irrelevance has no answer file: no call is expected.
        e["possible_answer"] = answers.get(e["id"], [])
    return entries
