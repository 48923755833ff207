"""Evaluation, the pure parts: the held-out split, eval rows, metrics, the pass judgement.

No Ray, no engine (the stage is :mod:`ttpa_ray.evaluate.stage`). An eval row is one assistant turn
to predict: ``messages_json`` (the conversation before the turn), ``tools_json`` (schemas
as given, scored against), ``prompt_tools_json`` (the same in OpenAI form with JSON Schema
types, rendered into the prompt), and gold as ``gold_json`` (concrete calls, held-out data)
or ``possible_answer_json`` (BFCL). After generation and ESM scoring a row also carries
``prediction``, ``generation_error``, ``esm_score``, ``errors``, ``valid``, ``score_error``.

Metrics per category (:func:`category_metrics`); a row that failed to generate or to score
counts as wrong (and 0 in ``mean_esm``) everywhere, and is counted in ``generation_errors``
/ ``score_errors``, so a failing engine can never raise a score:

- ``accuracy``: share of rows ESM calls ``valid`` (no error code: BFCL's AST accept), the
  *strict* rule on rows where no call is expected (irrelevance, held-out no-call turns): any
  attempt to call is a call, an undecodable one (``decode_failed``) included;
- ``accuracy_ci``: its 95% bootstrap interval (:func:`~ttpa_ray.evaluate.stats.bootstrap_ci`);
- ``accuracy_bfcl_rule``: the same under BFCL's own checker, which counts an undecodable call
  attempt as a correct abstention where no call is expected (gorilla#443); equal to
  ``accuracy`` on rows with gold calls (:func:`correct_bfcl_rule`);
- ``mean_esm``: mean ESM score;
- ``tool_selection_accuracy``: the predicted function names equal the gold names as a
  multiset (irrelevance: no call made); undecodable output is a wrong selection;
- ``parameter_accuracy``: among rows with a right selection and at least one gold call, the
  share without argument error codes (:data:`ARGUMENT_CODES`); None when there is no such row;
- ``error_codes``: rows per ESM error code.

>>> rows = [{"valid": True, "esm_score": 1.0, "errors": [], "generation_error": None, "score_error": None,
...          "predicted_names": ["f"], "gold_names": ["f"]},
...         {"valid": False, "esm_score": 0.8, "errors": ["value_error"], "generation_error": None,
...          "score_error": None, "predicted_names": ["f"], "gold_names": ["f"]}]
>>> m = category_metrics(rows)
>>> (m["n"], m["accuracy"], m["tool_selection_accuracy"], m["parameter_accuracy"], m["error_codes"])
(2, 0.5, 1.0, 0.5, {'value_error': 1})
>>> m["accuracy_ci"]
(0.0, 1.0)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from ttpa_ray.evaluate.stats import bootstrap_ci
from ttpa_ray.instances import held_out_ids, turn_rows
from ttpa_ray.toolcall import DECODE_FAILED, json_schema_types, load_tools, parse_calls

BFCL_FILES = {"simple": "simple_python", "multiple": "multiple", "parallel": "parallel",
              "parallel_multiple": "parallel_multiple", "irrelevance": "irrelevance"}
"""Our category names -> BFCL v4 data file names (``simple`` is BFCL's python subset)."""

ARGUMENT_CODES = frozenset({"missing_required", "missing_optional", "unexpected_param", "type_error",
                            "value_error", "wrong_func_name"})
"""ESM codes that mean an argument is wrong once names and count are right (a wrong name can
still show up when equal name multisets are matched across calls)."""


# --------------------------------------------------------------------------- split and rows


def prompt_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Tool schemas in OpenAI form with JSON Schema types, as chat templates take them."""
    out = []
    for t in load_tools(tools):
        fn = t.openai()
        fn["function"]["parameters"] = json_schema_types(fn["function"]["parameters"])
        out.append(fn)
    return out


def bfcl_row(entry: dict[str, Any], category: str) -> dict[str, Any]:
    """One BFCL entry (single turn: ``question[0]`` is its messages) as an eval row."""
    return {"category": category, "id": str(entry["id"]), "instance_id": -1, "turn_index": -1,
            "messages_json": json.dumps(entry["question"][0], ensure_ascii=False),
            "tools_json": json.dumps(entry["function"], ensure_ascii=False),
            "prompt_tools_json": json.dumps(prompt_tools(entry["function"]), ensure_ascii=False),
            "gold_json": None, "possible_answer_json": json.dumps(entry["possible_answer"], ensure_ascii=False)}


def held_out_rows(instances: Iterable[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """One eval row per gold turn (:func:`~ttpa_ray.instances.turn_rows`) of each held-out instance: a
    call turn, or a no-call turn with gold ``[]`` (a call there is ``unexpected_call``; no call,
    a right tool selection)."""
    instances = list(instances)
    ids = held_out_ids(instances, fraction, seed)
    held = [i for i in instances if int(i["id"]) in ids]
    return [{"category": "held_out", "id": f"{t['instance_id']}:{t['turn_index']}", "instance_id": t["instance_id"],
             "turn_index": t["turn_index"], "messages_json": t["prompt_json"], "tools_json": t["tools_json"],
             "prompt_tools_json": t["tools_json"], "gold_json": t["gold_json"], "possible_answer_json": None}
            for t in turn_rows(held)]


def episode_rows(instances: Iterable[dict[str, Any]], fraction: float, seed: int,
                 executable: set[str]) -> list[dict[str, Any]]:
    """Pass-rate episodes: one per user turn (with gold calls) of each held-out instance whose
    tools all have a sandbox implementation. The model gets the conversation up to and with
    the user message; ``gold_names`` are the tools the gold turn called."""
    instances = list(instances)
    ids = held_out_ids(instances, fraction, seed)
    rows = []
    for inst in instances:
        if int(inst["id"]) not in ids:
            continue
        tools = json.loads(inst["tools"])
        if not all(t.get("function", t).get("name") in executable for t in tools):
            continue
        msgs = json.loads(inst["messages"])
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"] + [len(msgs)]
        for start, end in zip(users, users[1:]):
            names = [c["function"]["name"] for m in msgs[start:end] if m["role"] == "assistant"
                     for c in m.get("tool_calls") or []]
            if names:
                rows.append({"instance_id": int(inst["id"]), "turn_index": start, "tools_json": inst["tools"],
                             "messages_json": json.dumps(msgs[:start + 1], ensure_ascii=False),
                             "gold_names_json": json.dumps(names)})
    return rows


# --------------------------------------------------------------------------- names


def call_names(prediction: str | None) -> list[str] | None:
    """Function names called in a model output; None when it cannot be read (or is missing)."""
    if prediction is None:
        return None
    parsed = parse_calls(prediction)
    return None if parsed.error else [c.name for c in parsed.calls]


def gold_names(row: dict[str, Any]) -> list[str]:
    """Gold function names of an eval row (BFCL possible answers or concrete gold calls)."""
    if row.get("possible_answer_json") is not None:
        return [name for answer in json.loads(row["possible_answer_json"]) for name in answer]
    return [c["name"] for c in json.loads(row["gold_json"] or "[]")]


# --------------------------------------------------------------------------- metrics


def _failed(row: dict[str, Any]) -> bool:
    return bool(row.get("generation_error") or row.get("score_error"))


def correct(row: dict[str, Any]) -> bool:
    """The headline outcome of a row: generated, scored, and ESM-valid (strict on no-call rows)."""
    return not _failed(row) and bool(row["valid"])


def correct_bfcl_rule(row: dict[str, Any]) -> bool:
    """BFCL's outcome: as :func:`correct`, except that where no call is expected an output that
    does not decode to calls (``decode_failed``) is a correct abstention, as BFCL's irrelevance
    checker counts it.

    >>> row = {"valid": False, "errors": ["decode_failed"], "gold_names": [], "generation_error": None}
    >>> correct(row), correct_bfcl_rule(row)
    (False, True)
    >>> correct_bfcl_rule(row | {"gold_names": ["f"]})
    False
    """
    if correct(row):
        return True
    return not _failed(row) and not row["gold_names"] and list(row["errors"]) == [DECODE_FAILED]


def selection_right(row: dict[str, Any]) -> bool:
    pred = row.get("predicted_names")
    return not _failed(row) and pred is not None and Counter(pred) == Counter(row["gold_names"])


def category_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of one category (or any group of scored eval rows); see the module docstring."""
    n = len(rows)
    ok = [r for r in rows if not _failed(r)]
    selected = [r for r in rows if selection_right(r)]
    with_args = [r for r in selected if r["gold_names"]]
    args_right = [r for r in with_args if not ARGUMENT_CODES & set(r["errors"])]
    codes = Counter(c for r in ok for c in r["errors"])

    def share(k: int, d: int) -> float | None:
        return round(k / d, 4) if d else None

    outcomes = [correct(r) for r in rows]
    return {"n": n,
            "accuracy": share(sum(outcomes), n),
            "accuracy_ci": bootstrap_ci(outcomes),
            "accuracy_bfcl_rule": share(sum(correct_bfcl_rule(r) for r in rows), n),
            "mean_esm": round(sum(float(r["esm_score"]) for r in ok) / n, 4) if n else None,
            "tool_selection_accuracy": share(len(selected), n),
            "parameter_accuracy": share(len(args_right), len(with_args)),
            "error_codes": dict(sorted(codes.items())),
            "generation_errors": sum(bool(r.get("generation_error")) for r in rows),
            "score_errors": sum(bool(r.get("score_error")) and not r.get("generation_error") for r in rows)}


def group_metrics(rows: Sequence[dict[str, Any]], categories: Sequence[str]) -> dict[str, Any]:
    """Per category (in the given order, empty ones included), ``overall`` over all rows, and
    ``macro_accuracy`` (unweighted mean of the category accuracies, BFCL's summary style)."""
    out: dict[str, Any] = {c: category_metrics([r for r in rows if r["category"] == c]) for c in categories}
    accs = [m["accuracy"] for m in out.values() if m["accuracy"] is not None]
    out["overall"] = category_metrics(rows)
    out["overall"]["macro_accuracy"] = round(sum(accs) / len(accs), 4) if accs else None
    return out


# --------------------------------------------------------------------------- pass rate


def arguments_valid(arguments: Any, schema: dict[str, Any]) -> bool:
    """Arguments valid against an OpenAI tool schema's parameters (JSON Schema)."""
    import jsonschema

    params = schema.get("function", schema).get("parameters") or {"type": "object", "properties": {}}
    try:
        jsonschema.validate(arguments, params)
    except jsonschema.ValidationError:
        return False
    return True


def judge_episode(calls: Sequence[dict[str, Any]], final: bool, failure: str | None, gold: Sequence[str],
                  tools: Sequence[dict[str, Any]]) -> tuple[bool, str | None]:
    """(passed, reason when not). Passed: the episode ended with a final answer (a turn without
    calls) and every gold tool was called, by name, at least once with valid arguments.

    >>> tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
    ...           "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}]
    >>> judge_episode([{"name": "f", "arguments": {"x": 1}}], True, None, ["f"], tools)
    (True, None)
    >>> judge_episode([{"name": "f", "arguments": {"x": "1"}}], True, None, ["f"], tools)
    (False, 'gold tool not called with valid arguments: f')
    """
    if failure:
        return False, failure
    if not final:
        return False, "no final answer within max_steps"
    schemas = {t.get("function", t)["name"]: t for t in tools}
    missing = [g for g in dict.fromkeys(gold) if not any(
        c["name"] == g and g in schemas and arguments_valid(c["arguments"], schemas[g]) for c in calls)]
    if missing:
        return False, f"gold tool not called with valid arguments: {', '.join(missing)}"
    return True, None


def pass_rate_metrics(episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    reasons = Counter(str(e["reason"]).split(":")[0] for e in episodes if not e["passed"])
    passed = sum(bool(e["passed"]) for e in episodes)
    return {"episodes": len(episodes), "passed": passed,
            "pass_rate": round(passed / len(episodes), 4) if episodes else None,
            "pass_rate_ci": bootstrap_ci([bool(e["passed"]) for e in episodes]),
            "fail_reasons": dict(sorted(reasons.items()))}


# --------------------------------------------------------------------------- table


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.2f},{ci[1]:.2f}]" if ci else "-"


def format_table(metrics: dict[str, Any]) -> str:
    """A short fixed-width table of the per-category metrics (accuracy with its 95% bootstrap
    interval; ``bfcl`` is the accuracy under BFCL's irrelevance rule) and the pass rate."""
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [f"{'group/category':<28}{'n':>5}{'acc':>8}{'95% CI':>13}{'bfcl':>7}{'esm':>7}{'tool':>7}{'param':>7}"
             f"{'gen_err':>8}{'sc_err':>7}"]
    for group in ("bfcl", "held_out"):
        for cat, m in (metrics.get(group) or {}).items():
            if isinstance(m, dict) and "n" in m:
                lines.append(f"{group + '/' + cat:<28}{m['n']:>5}{cell(m['accuracy']):>8}"
                             f"{_ci(m.get('accuracy_ci')):>13}{cell(m.get('accuracy_bfcl_rule')):>7}"
                             f"{cell(m['mean_esm']):>7}{cell(m['tool_selection_accuracy']):>7}"
                             f"{cell(m['parameter_accuracy']):>7}{m['generation_errors']:>8}{m['score_errors']:>7}")
    pr = metrics.get("pass_rate")
    if isinstance(pr, dict) and "episodes" in pr:
        lines.append(f"pass rate: {pr['passed']}/{pr['episodes']} = {cell(pr['pass_rate'])} "
                     f"{_ci(pr.get('pass_rate_ci'))}  {pr['fail_reasons']}")
    return "\n".join(lines)
