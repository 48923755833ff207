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
(``evaluate.held_out_fraction``, :func:`held_out_ids`) keeps some instances out of SFT, sampling and
training, for evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
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


# Part of the fingerprint of every stage that reads the split (sft, sample, evaluate): change it
# with any change to which instances :func:`held_out_ids` picks, so a resumed run redoes them
# instead of mixing two splits (2: stratified by kind; 1 was an unstratified hash cut).
SPLIT_VERSION = 2


def _rank(key: object, seed: int) -> int:
    """A stable pseudo-random rank of an instance id (or a kind's name) under ``seed``."""
    return int.from_bytes(hashlib.sha256(f"ttpa-held-out:{seed}:{key}".encode()).digest()[:8], "big")


def held_out_ids(instances: Iterable[dict[str, Any]], fraction: float, seed: int) -> frozenset[int]:
    """Ids of the instances held out of SFT, sampling and training, for evaluation: the split is
    stratified by ``kind`` (single, multiple, ..., irrelevance), so a kind that is a third of the
    instances is about a third of the held-out ones, and a call-free split (no pass-rate
    episode) cannot happen by chance. ``round(fraction * n)`` instances in all (never all of
    them unless ``fraction`` is 1); each kind gets ``floor(fraction * its count)``, the rest go
    to the kinds with the largest remainders. Within a kind, the ids that rank first by a hash
    of (seed, id): stable across runs and machines. Instances without ``kind`` form one stratum.
    An irrelevance twin (``twin_of``, :mod:`ttpa_ray.construct.twins`) is not drawn: it goes
    where its source goes, so a query is never both trained on and evaluated.

    >>> insts = [{"id": i, "kind": "irrelevance" if i < 4 else "single"} for i in range(10)]
    >>> held = held_out_ids(insts, 0.2, seed=0)
    >>> len(held), sorted(i < 4 for i in held)   # 2 of 10: one per kind, not two of one kind
    (2, [False, True])
    >>> held == held_out_ids(list(reversed(insts)), 0.2, seed=0), held_out_ids(insts, 0.0, seed=0)
    (True, frozenset())
    >>> twins = [{"id": 10 + i, "kind": "irrelevance", "twin_of": i} for i in range(4, 10)]
    >>> held_out_ids(insts + twins, 0.2, seed=0) == held | {10 + i for i in held if i >= 4}
    True
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {fraction}")
    strata: dict[str, list[int]] = {}
    twins: list[tuple[int, int]] = []
    for inst in instances:
        if inst.get("twin_of") is not None:
            twins.append((int(inst["id"]), int(inst["twin_of"])))
            continue
        strata.setdefault(str(inst.get("kind") or ""), []).append(int(inst["id"]))
    n = sum(len(ids) for ids in strata.values())
    total = math.floor(fraction * n + 0.5)
    if fraction < 1.0:
        total = min(total, n - 1)
    quota = {k: math.floor(fraction * len(ids)) for k, ids in strata.items()}
    rest = sorted(strata, key=lambda k: (-(fraction * len(strata[k]) - quota[k]), _rank(k, seed)))
    for k in rest[:max(0, total - sum(quota.values()))]:
        quota[k] += 1
    held = {i for k, ids in strata.items() for i in sorted(ids, key=lambda i: _rank(i, seed))[:quota[k]]}
    return frozenset(held | {i for i, src in twins if src in held})
