"""ESM as a Ray Data stage: ``map_batches`` over an autoscaling pool of scoring actors.

Input columns (one row = one turn to score):

- ``tools_json``: the turn's tool schemas (a JSON list);
- ``prediction`` (raw model text) or ``prediction_json`` (a JSON list of calls);
- ``gold_json`` (a JSON list of calls; ``[]`` = no call expected) or ``possible_answer_json``.

Added columns: ``esm_score`` (float), ``errors`` (list of codes), ``valid`` (bool) and
``score_error`` (None, or why the row could not be scored: bad gold or schemas). A bad row
is kept and counted, never dropped, and never stops the stage.

With ``score.execution_check`` on, each matched (predicted, gold) pair whose tool has an
implementation in the catalog is also executed in the sandbox, and ``execution_match``
records whether both calls return the same result (None when nothing could be checked).
This catches calls that differ in form but not in effect, and the reverse.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ttpa_ray.config import ScoreConfig
from ttpa_ray.score.esm import ESMWeights, esm_score
from ttpa_ray.toolcall import ToolSchema, load_tools
from ttpa_ray.columns import none_if_nan, nulls_as_none, object_column


class ScoreBatch:
    """Ray Data callable class; also usable directly on a dict of columns."""

    def __init__(self, weights: dict[str, float] | None = None, cache_size: int = 4096,
                 execution_check: bool = False, catalog: str = "bundled"):
        self.weights = ESMWeights(**(weights or {}))
        self._tools: dict[str, list[ToolSchema]] = {}
        self._cache_size = cache_size
        self._impls: dict[str, str] = {}
        self._sandbox: Any = None
        if execution_check:
            from ttpa_ray.tools.catalog import resolve_catalog
            from ttpa_ray.tools.sandbox import Sandbox

            self._impls = {t.name: t.impl for t in resolve_catalog(catalog) if t.impl}
            self._sandbox = Sandbox()

    def execution_match(self, result: Any, gold: list[dict[str, Any]] | None) -> bool | None:
        """Do the matched predicted and gold calls return the same results? None if unchecked."""
        if self._sandbox is None or not gold or not result.calls:
            return None
        checked = []
        for i, j, _ in result.calls:
            pred, ref = result.predicted[i], gold[j]
            impl = self._impls.get(ref["name"])
            if impl is None or pred.name != ref["name"]:
                continue
            a, b = self._sandbox.execute_many([(impl, pred.arguments), (impl, ref["arguments"])])
            checked.append(a.ok and b.ok and a.output == b.output)
        return all(checked) if checked else None

    def _schemas(self, tools_json: str) -> list[ToolSchema]:
        # Rows of one instance share tool lists: validate each distinct list once.
        hit = self._tools.get(tools_json)
        if hit is None:
            hit = load_tools(json.loads(tools_json))
            if len(self._tools) >= self._cache_size:
                self._tools.clear()
            self._tools[tools_json] = hit
        return hit

    def score_row(self, row: dict[str, Any], with_execution: bool = False) -> tuple:
        """(esm_score, errors, valid, score_error) [+ execution_match when ``with_execution``]."""
        try:
            tools = self._schemas(row["tools_json"])
            pred = row.get("prediction")
            if pred is None and row.get("prediction_json") is not None:
                pred = json.loads(row["prediction_json"])
            if row.get("possible_answer_json") is not None:
                r = esm_score(pred, tools, possible_answer=json.loads(row["possible_answer_json"]),
                              weights=self.weights)
                gold = None
            else:
                gold = json.loads(row["gold_json"] or "[]")
                r = esm_score(pred, tools, gold=gold, weights=self.weights)
            if with_execution:
                return r.score, r.errors, r.valid, None, self.execution_match(r, gold)
            return r.score, r.errors, r.valid, None
        except (ValueError, TypeError, KeyError) as exc:  # bad gold/schemas: an error row, counted
            return (None, [], False, f"{type(exc).__name__}: {exc}") + ((None,) if with_execution else ())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(batch.values())))
        cols = list(batch)
        scores, errors, valid, bad, match = [], [], [], [], []
        for i in range(n):
            s, e, v, b, m = self.score_row({c: none_if_nan(batch[c][i]) for c in cols}, with_execution=True)
            scores.append(np.nan if s is None else s)
            errors.append(e)
            valid.append(v)
            bad.append(b)
            match.append(m)
        out = nulls_as_none(batch)
        out["esm_score"] = np.array(scores, dtype=np.float64)
        out["errors"] = object_column(errors)
        out["valid"] = np.array(valid, dtype=bool)
        out["score_error"] = object_column(bad)
        if self._sandbox is not None:
            out["execution_match"] = object_column(match)
        return out


def score_pool_kwargs(cfg: ScoreConfig, upstream_batch: int | None = None) -> dict[str, Any]:
    """map_batches arguments of the scoring pool. ``upstream_batch``: the rows per call of the
    generation before it; a scoring call takes no more, so scored rows stream out as each
    generated block lands. (Scoring waits for a full batch: with ``score.pool.batch_size`` 512,
    no row of a 643-row evaluation came out before the 512th was generated, and the progress
    line sat at 0 for 20 minutes.)"""
    from ttpa_ray.engines.actors import pool_kwargs
    from ttpa_ray.resources import scorer_memory_bytes

    kwargs = pool_kwargs(cfg.pool, scorer_memory_bytes())
    if upstream_batch:
        kwargs["batch_size"] = min(kwargs["batch_size"], upstream_batch)
    return kwargs


def score_dataset(ds: Any, cfg: ScoreConfig, upstream_batch: int | None = None) -> Any:
    """Add ESM columns to a Ray Dataset using a pool of scoring actors (:func:`score_pool_kwargs`)."""
    return ds.map_batches(
        ScoreBatch, fn_constructor_kwargs={"weights": cfg.weights.model_dump(),
                                           "execution_check": cfg.execution_check, "catalog": cfg.catalog},
        batch_format="numpy", **score_pool_kwargs(cfg, upstream_batch))


def score_jsonl(inp: str, out: str, weights: dict[str, float] | None = None) -> dict[str, int]:
    """``ttpa score-calls``: score each JSON line of ``inp`` into ``out`` (in process, no Ray).

    Input line: ``{"tools": [...], "prediction": "<text>" | [calls], "gold": [calls]}`` or
    ``... "possible_answer": [{"func": {"param": [values]}}]``. Output line: the input plus
    ``esm_score``, ``errors``, ``valid``. A bad line becomes ``{"line": N, "error": "...",
    "esm_score": null, "errors": [], "valid": false}``; the other lines are still scored.
    """
    scorer = ScoreBatch(weights)
    counts = {"lines": 0, "scored": 0, "valid": 0, "bad_lines": 0}
    with open(inp, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for n, line in enumerate(src, start=1):
            if not line.strip():
                continue
            counts["lines"] += 1
            problem, item = _read_line(line)
            if item is not None:
                row = {"tools_json": json.dumps(item["tools"]),
                       "prediction": item["prediction"] if isinstance(item["prediction"], str) else None,
                       "prediction_json": None if isinstance(item["prediction"], str) else json.dumps(item["prediction"]),
                       "gold_json": json.dumps(item["gold"]) if "gold" in item else None,
                       "possible_answer_json": json.dumps(item["possible_answer"]) if "possible_answer" in item else None}
                score, errors, valid, problem = scorer.score_row(row)
            if problem is not None:
                counts["bad_lines"] += 1
                dst.write(json.dumps({"line": n, "error": f"line {n}: {problem}", "esm_score": None, "errors": [],
                                      "valid": False}) + "\n")
                continue
            counts["scored"] += 1
            counts["valid"] += bool(valid)
            dst.write(json.dumps(item | {"esm_score": score, "errors": errors, "valid": valid}, ensure_ascii=False)
                      + "\n")
    return counts


def _read_line(line: str) -> tuple[str | None, dict[str, Any] | None]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at char {exc.pos})", None
    if not isinstance(item, dict):
        return "each line must be a JSON object", None
    missing = [k for k in ("tools", "prediction") if k not in item]
    if missing:
        return f"missing {missing}", None
    if ("gold" in item) == ("possible_answer" in item):
        return "give exactly one of `gold` (a list of calls, [] = no call expected) or `possible_answer`", None
    if not isinstance(item["tools"], list):
        return "`tools` must be a list of tool schemas", None
    return None, item
