"""ESM validated against BFCL itself: for every entry of five categories, a prediction built
from the possible answers is valid (score 1.0), and each systematic perturbation gives the
matching error code and valid=False."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ttpa_ray.evaluate.bfcl import CATEGORIES, load_category
from ttpa_ray.score.esm import esm_score
from ttpa_ray.toolcall import load_tools


def _first(values: list[Any]) -> Any:
    return next(v for v in values if v != "")


def gold_prediction(entry: dict, include_optional: bool) -> list[dict]:
    """One call per possible answer, with the first acceptable value of each parameter.
    Parameters that may be omitted ("" acceptable) are dropped unless the schema requires them
    (BFCL checks required parameters first) or ``include_optional`` and the schema has them."""
    tools = {t.name: t for t in load_tools(entry["function"])}
    calls = []
    for answer in entry["possible_answer"]:
        (name, params), = answer.items()
        t = tools.get(name)
        args = {k: _first(v) for k, v in params.items() if any(x != "" for x in v) and (
            "" not in v or (t and k in t.required) or (include_optional and t and k in t.properties))}
        calls.append({"name": name, "arguments": args})
    return calls


def _score(entry: dict, pred: Any):
    return esm_score(pred, entry["function"], possible_answer=entry["possible_answer"])


@pytest.fixture(scope="module", params=CATEGORIES)
def entries(request):
    return request.param, load_category(request.param)


def test_gold_is_valid_and_scores_one(entries):
    category, data = entries
    assert len(data) >= 200
    for entry in data:
        for include_optional in (False, True):
            pred = gold_prediction(entry, include_optional)
            r = _score(entry, pred)
            assert r.valid and r.score == 1.0, (entry["id"], include_optional, r.errors, r.messages)
            # Also as raw model text in the Hermes format.
            from ttpa_ray.toolcall import render_calls
            text = render_calls(pred) if pred else "I cannot help with that using these tools."
            assert _score(entry, text).valid, entry["id"]


def _perturb(entry: dict) -> list[tuple[str, list[dict]]]:
    """(expected error code, perturbed prediction) pairs that apply to this entry."""
    pred = gold_prediction(entry, include_optional=False)
    if not pred:
        return [("unexpected_call", [{"name": entry["function"][0]["name"], "arguments": {}}])]
    tools = {t.name: t for t in load_tools(entry["function"])}
    out = []
    call0 = pred[0]
    schema = tools.get(call0["name"])

    p = copy.deepcopy(pred)
    p[0]["name"] = call0["name"] + "_renamed"
    out.append(("wrong_func_name", p))

    if schema and schema.required:
        p = copy.deepcopy(pred)
        p[0]["arguments"].pop(schema.required[0], None)
        out.append(("missing_required", p))

    p = copy.deepcopy(pred)
    p[0]["arguments"]["zz_unknown_param"] = 1
    out.append(("unexpected_param", p))

    for k, v in call0["arguments"].items():
        spec = schema.properties.get(k, {}) if schema else {}
        t = spec.get("type")
        if t in ("integer", "float", "number", "boolean", "array", "dict", "object", "tuple") and v is not None:
            p = copy.deepcopy(pred)
            p[0]["arguments"][k] = "zz_not_a_" + str(t)
            out.append(("type_error", p))
            break
    for k, v in call0["arguments"].items():
        p = copy.deepcopy(pred)
        if isinstance(v, bool):
            p[0]["arguments"][k] = not v
        elif isinstance(v, (int, float)):
            p[0]["arguments"][k] = v + 7919
        elif isinstance(v, str):
            p[0]["arguments"][k] = v + " zzqx"
        else:
            continue
        out.append(("value_error", p))
        break

    out.append(("missing_call", []))
    out.append(("wrong_count", pred + [copy.deepcopy(pred[0])]))
    if len(pred) > 1:
        out.append(("wrong_count", pred[:-1]))
    return out


def test_perturbations_give_matching_error_codes(entries):
    category, data = entries
    seen = set()
    for entry in data:
        for code, pred in _perturb(entry):
            r = _score(entry, pred)
            assert not r.valid and code in r.errors, (entry["id"], code, r.errors, r.messages, pred)
            assert 0.0 <= r.score < 1.0
            seen.add(code)
    expected = {"unexpected_call"} if category == "irrelevance" else {
        "wrong_func_name", "missing_required", "unexpected_param", "type_error", "value_error", "missing_call",
        "wrong_count"}
    assert expected <= seen, expected - seen


def test_irrelevance_no_call_is_valid():
    data = load_category("irrelevance")
    for entry in data[:50]:
        r = _score(entry, "I can't do that with the tools I have.")
        assert r.valid and r.score == 1.0
