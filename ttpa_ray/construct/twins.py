"""Irrelevance twins: a kept call instance's first query again, with none of the tools it needs.

``construct.irrelevance_twins`` (a share of the kept call instances) adds, for each chosen
instance, a no-call instance with the same first user message, the offered tools from other
domains than the ones its calls use (topped up from the catalog's other domains to as many
tools as the source offered, so the count of tools carries no call signal), and the construct's decline
(:func:`~ttpa_ray.construct.templates.no_tool_answer`, naming what the first needed tool does).

The pair of instances differs only in the tools offered, so the decision to call has to come
from the tools, not from how the query reads. The generated irrelevance instances
(``mix.irrelevance``) have queries of their own, and a small model can learn "a request like
this is answered with a call" from the call instances without ever seeing that request with
the tools missing. A twin costs no generation. It records its source in ``twin_of``, and
:func:`~ttpa_ray.instances.held_out_ids` keeps twins on their source's side of the split (the
same query is never trained on and evaluated).
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from ttpa_ray.construct.templates import no_tool_answer


def chosen_sources(rows: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """The kept instances with calls that get a twin: ``round(share * n)`` of them, those first
    by a hash of (seed, id), returned in id order.

    >>> rows = [{"id": i, "kind": "single" if i % 2 else "irrelevance"} for i in range(8)]
    >>> [r["id"] for r in chosen_sources(rows, 1.0, 0)], len(chosen_sources(rows, 0.5, 0))
    ([1, 3, 5, 7], 2)
    """
    calls = [r for r in rows if r["kind"] != "irrelevance"]
    rank = sorted(calls, key=lambda r: hashlib.sha256(f"ttpa-twin:{seed}:{r['id']}".encode()).digest())
    return sorted(rank[:int(share * len(calls) + 0.5)], key=lambda r: r["id"])


def _name(tool: dict[str, Any]) -> str:
    return tool.get("function", tool)["name"]


def twin(row: dict[str, Any], twin_id: int, domain_of: dict[str, str], catalog: dict[str, dict[str, Any]],
         seed: int) -> dict[str, Any]:
    """The irrelevance twin of a kept call instance ``row`` (an ``instances.parquet`` row).
    ``domain_of``: every catalog tool's domain by name; ``catalog``: every tool's OpenAI schema
    by name. Raises ValueError when no tool of another domain exists (the caller counts it).

    >>> tool = lambda n: {"type": "function", "function": {"name": n, "description": f"Do {n}.", "parameters": {}}}
    >>> call = {"type": "function", "function": {"name": "a1", "arguments": {}}}
    >>> msgs = [{"role": "user", "content": "a1 please"}, {"role": "assistant", "content": "", "tool_calls": [call]},
    ...         {"role": "tool", "content": "1"}, {"role": "assistant", "content": "It is 1."}]
    >>> row = {"id": 3, "kind": "single", "domain": "A", "tools": json.dumps([tool("a1"), tool("a2")]),
    ...        "messages": json.dumps(msgs), "provenance": "{}"}
    >>> t = twin(row, 10, {"a1": "A", "a2": "A", "b1": "B"}, {n: tool(n) for n in ("a1", "a2", "b1")}, seed=0)
    >>> [_name(x) for x in json.loads(t["tools"])], t["twin_of"], t["kind"]
    (['b1'], 3, 'irrelevance')
    >>> [m["role"] for m in json.loads(t["messages"])], t["answer"][:40]
    (['user', 'assistant'], "I'm sorry, I can't do that here: none of")
    """
    msgs = json.loads(row["messages"])
    first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    if not msgs[first].get("tool_calls") or msgs[first - 1]["role"] != "user":
        raise ValueError(f"instance {row['id']}: its first assistant message has no calls")
    nxt = next((i for i in range(first, len(msgs)) if msgs[i]["role"] == "user"), len(msgs))
    used = list(dict.fromkeys(c["function"]["name"] for m in msgs[first:nxt] for c in m.get("tool_calls") or []))
    offered = json.loads(row["tools"])
    by_name = {_name(t): t for t in offered}
    needed = {domain_of.get(n, row["domain"]) for n in used} | {row["domain"]}
    rng = random.Random(f"{seed}:twin:{row['id']}")
    keep = [t for t in offered if domain_of.get(_name(t)) not in needed]
    want = len(offered)  # as many tools as the source: the count says nothing about calling
    pool = sorted(n for n, d in domain_of.items() if d not in needed and n not in {_name(t) for t in keep})
    if not keep and not pool:
        raise ValueError(f"instance {row['id']}: the catalog has no tool outside domains {sorted(needed)}")
    keep += [catalog[n] for n in rng.sample(pool, min(len(pool), want - len(keep)))] if len(keep) < want else []
    rng.shuffle(keep)
    need = by_name.get(used[0], catalog.get(used[0], {}))
    answer = no_tool_answer(need.get("function", need).get("description", "") if need else "")
    prov = json.loads(row.get("provenance") or "{}") | {"twin_of": int(row["id"])}
    constraints = json.loads(row.get("constraints") or "{}") | {"kind": "irrelevance", "twin_of": int(row["id"])}
    return {**row, "id": twin_id, "kind": "irrelevance", "tools": json.dumps(keep, ensure_ascii=False),
            "messages": json.dumps([msgs[first - 1], {"role": "assistant", "content": answer}], ensure_ascii=False),
            "answer": answer, "constraints": json.dumps(constraints, ensure_ascii=False),
            "provenance": json.dumps(prov, ensure_ascii=False), "twin_of": int(row["id"])}


def add_twins(kept: list[dict[str, Any]], share: float, seed: int, tools: list[Any], next_id: int
              ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """``kept`` plus the twins of :func:`chosen_sources` (ids from ``next_id`` on: after every
    attempted instance's), and counts: ``made``, and ``no_other_domain`` for sources that could
    not get one. ``tools``: the catalog's tools (``name``, ``domain``, ``openai()``)."""
    counts = {"made": 0, "no_other_domain": 0}
    if share <= 0:
        return kept, counts
    domain_of = {t.name: t.domain for t in tools}
    catalog = {t.name: t.openai() for t in tools}
    out = list(kept)
    for src in chosen_sources(kept, share, seed):
        try:
            out.append(twin(src, next_id, domain_of, catalog, seed))
        except ValueError:
            counts["no_other_domain"] += 1
            continue
        next_id += 1
        counts["made"] += 1
    return out, counts
