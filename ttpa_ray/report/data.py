"""The report's data section: what construct made (pure; :mod:`ttpa_ray.report.build` calls it).

Instances attempted and kept per kind, the path that wrote each kept turn's query and answer
(generated, a rewrite of a template seed, the seed itself), and a data card with the first
kept instance of each kind. Older runs that recorded none of these get "not recorded" notes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ttpa_ray.config import KINDS
from ttpa_ray.report.render import Block, Call, DataCard, Example, Note, Section, Table, Turn, fmt

# The construct paths that write a turn's user query and its final answer (manifest
# ``query_paths`` / ``answer_paths``): a path missing from a manifest wrote no turn.
_PATHS = {"query": ("generated", "rewrite", "template"), "answer": ("generated", "template")}
_PATH_LABELS = {"rewrite": "rewrite (of a template seed)", "template": "template (the seed itself)"}
# Data card text limits (characters): long queries and answers are cut, saying by how much.
_QUERY_CHARS, _ANSWER_CHARS, _ARGUMENTS_CHARS = 600, 400, 300



def first_of_each_kind(path: Path) -> list[dict[str, Any]] | None:
    """The row with the lowest id of each kind, in KINDS order; None without a ``kind`` column."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if "kind" not in names:
        return None
    first: dict[str, int] = {}
    for r in pq.read_table(path, columns=["id", "kind"]).to_pylist():
        first[r["kind"]] = min(r["id"], first.get(r["kind"], r["id"]))
    if not first:
        return []
    columns = [c for c in ("id", "kind", "domain", "tools", "messages") if c in names]
    rows = pq.read_table(path, columns=columns, filters=[("id", "in", list(first.values()))]).to_pylist()
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(rows, key=lambda r: (order.get(r["kind"], len(order)), r["kind"], r["id"]))



def _share(n: int, total: int) -> str:
    return fmt(n / total) if total else "–"


def _clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters (at a space when one is near), saying how many
    characters were cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    if (space := cut.rfind(" ")) > limit * 0.8:
        cut = cut[:space]
    return f"{cut.rstrip()} … [{len(text) - len(cut)} more characters]"


def _example(row: dict[str, Any]) -> Example:
    """A data card entry from an instances.parquet row (OpenAI chat messages and tool schemas)."""
    turns: list[Turn] = []
    for m in json.loads(row["messages"]):
        if m["role"] == "user":
            turns.append(Turn(_clip(m.get("content") or "", _QUERY_CHARS), [], ""))
        elif m["role"] == "assistant" and m.get("tool_calls"):
            turns[-1].steps.append([Call(c["function"]["name"], _clip(
                a if isinstance(a := c["function"]["arguments"], str) else json.dumps(a, ensure_ascii=False),
                _ARGUMENTS_CHARS)) for c in m["tool_calls"]])
        elif m["role"] == "assistant":
            turns[-1].answer = _clip(m.get("content") or "", _ANSWER_CHARS)
    used = {c.name for t in turns for step in t.steps for c in step}
    tools = [t["function"]["name"] for t in json.loads(row["tools"])]
    return Example(str(row["kind"]), int(row["id"]), str(row.get("domain") or ""),
                   [(n, n in used) for n in tools], turns)


def data_section(m: dict[str, Any] | None, not_run: str | None, construct_dir: Path,
                 examples: list[dict[str, Any]] | None) -> Section:
    """What construct made: instances per kind, who wrote each kept turn, one example per kind.
    ``m``: the construct manifest; ``not_run``: why it is not complete (None when it is);
    ``examples``: :func:`first_of_each_kind` of its instances (None: no kind column)."""
    title = "Data: constructed instances"
    if not m or not_run:
        return Section(title, [Note(not_run or "construct: not run")])
    older = "an older run: construct recorded no"
    blocks: list[Block] = []
    kinds = m.get("kinds")
    if isinstance(kinds, dict):
        order = {k: i for i, k in enumerate(KINDS)}
        rows = [[k, fmt(v["attempted"]), fmt(v["kept"]), _share(v["kept"], v["attempted"])]
                for k, v in sorted(kinds.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))]
        tried, kept = (sum(int(v[key]) for v in kinds.values()) for key in ("attempted", "kept"))
        rows.append(["total", fmt(tried), fmt(kept), _share(kept, tried)])
        blocks.append(Table("Instances per kind", ["kind", "attempted", "kept", "kept share"], rows))
    else:
        blocks.append(Note(f"construct: instances per kind not recorded ({older} kinds)"))
    counts = {w: m.get(f"{w}_paths") for w in _PATHS}
    if all(isinstance(c, dict) for c in counts.values()):
        totals = {w: sum(int(n) for n in c.values()) for w, c in counts.items()}
        rows = []
        for p in dict.fromkeys([*_PATHS["query"], *_PATHS["answer"], *counts["query"], *counts["answer"]]):
            row = [_PATH_LABELS.get(p, p)]
            for w, c in counts.items():
                row += ([fmt(c.get(p, 0)), _share(int(c.get(p, 0)), totals[w])]
                        if p in c or p in _PATHS[w] else ["–", "–"])
            rows.append(row)
        rows.append(["turns", fmt(totals["query"]), "", fmt(totals["answer"]), ""])
        blocks.append(Table("Kept turns by the path that wrote them",
                            ["path", "user queries", "query share", "final answers", "answer share"], rows))
    else:
        blocks.append(Note(f"construct: query and answer paths not recorded ({older} query_paths/answer_paths)"))
    if not (construct_dir / "instances.parquet").is_file():
        blocks.append(Note(f"construct: no data card (no instances.parquet in {construct_dir})"))
    elif examples is None:
        blocks.append(Note(f"construct: data card not recorded ({older} kind column in instances.parquet)"))
    elif not examples:
        blocks.append(Note("construct: no kept instances, so no data card"))
    else:
        blocks.append(DataCard("Data card: the first kept instance (lowest id) of each kind; ✓ marks the tools "
                               "its gold calls use", [_example(r) for r in examples]))
    return Section(title, blocks)
