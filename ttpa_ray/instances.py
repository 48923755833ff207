"""Constructed instances as the later stages read them: the gold turns, and the held-out split.

An instance (a row of ``construct/instances.parquet``) is a conversation (``messages``, OpenAI
chat form as JSON) with the tools it offers (``tools``). Its gold turns are the assistant
messages; the held-out split (``evaluate.held_out_fraction``) keeps some instances out of
sampling and training, for evaluation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def turn_rows(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per assistant message that holds a gold tool call."""
    rows = []
    for inst in instances:
        msgs = json.loads(inst["messages"])
        for i, m in enumerate(msgs):
            if m["role"] == "assistant" and m.get("tool_calls"):
                calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                         for c in m["tool_calls"]]
                rows.append({"instance_id": int(inst["id"]), "turn_index": i, "tools_json": inst["tools"],
                             "prompt_json": json.dumps(msgs[:i], ensure_ascii=False),
                             "gold_json": json.dumps(calls, ensure_ascii=False)})
    return rows


def is_held_out(instance_id: int, fraction: float, seed: int) -> bool:
    """Is this constructed instance held out of sampling and training? A hash of (seed, id):
    stable across runs and machines, independent of the other instances.

    >>> [is_held_out(i, 0.5, seed=0) for i in range(6)] == [is_held_out(i, 0.5, seed=0) for i in range(6)]
    True
    >>> is_held_out(3, 0.0, seed=0), is_held_out(3, 1.0, seed=0)
    (False, True)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {fraction}")
    digest = hashlib.sha256(f"ttpa-held-out:{seed}:{int(instance_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
