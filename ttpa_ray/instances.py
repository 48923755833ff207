"""Constructed instances as the later stages read them: the gold turns, and the held-out split.

An instance (a row of ``construct/instances.parquet``) is a conversation (``messages``, OpenAI
chat form as JSON) with the tools it offers (``tools``). Per user turn: the user message; then
call steps, each an assistant message with one or more ``tool_calls`` (parallel calls share a
message) followed by one ``tool`` message per call; then the final text answer. A turn where no
tool fits (irrelevance) is the user message followed directly by a text answer. An instance may
hold several user turns.

Its gold turns (:func:`turn_rows`) are every assistant message with calls, and every text
answer that directly follows a user message (a no-call turn: the model should answer, not call).
The final answer after tool results is not a gold turn. The held-out split
(``evaluate.held_out_fraction``) keeps some instances out of sampling and training, for evaluation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def turn_rows(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per gold turn (see the module docstring), in message order: ``instance_id``,
    ``turn_index`` (the gold message's index), ``tools_json``, ``prompt_json`` (the messages
    before it: the gold history, earlier turns' answers included), ``gold_json`` (all the
    message's calls; ``[]`` for a no-call turn) and ``gold_text`` (a no-call turn's answer,
    else ``""``).

    >>> call = {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    >>> msgs = [{"role": "user", "content": "f of 1?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
    ...         {"role": "tool", "content": "2"}, {"role": "assistant", "content": "It is 2."},
    ...         {"role": "user", "content": "A joke?"}, {"role": "assistant", "content": "No tool for that."}]
    >>> rows = turn_rows([{"id": 7, "tools": "[]", "messages": json.dumps(msgs)}])
    >>> [(r["turn_index"], r["gold_json"], r["gold_text"]) for r in rows]
    [(1, '[{"name": "f", "arguments": {"x": 1}}]', ''), (5, '[]', 'No tool for that.')]
    """
    rows = []
    for inst in instances:
        msgs = json.loads(inst["messages"])
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            if m.get("tool_calls"):
                calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                         for c in m["tool_calls"]]
                text = ""
            elif i > 0 and msgs[i - 1]["role"] == "user":
                calls, text = [], m.get("content") or ""
            else:
                continue  # the final answer after tool results
            rows.append({"instance_id": int(inst["id"]), "turn_index": i, "tools_json": inst["tools"],
                         "prompt_json": json.dumps(msgs[:i], ensure_ascii=False),
                         "gold_json": json.dumps(calls, ensure_ascii=False), "gold_text": text})
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
