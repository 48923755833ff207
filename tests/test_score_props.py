"""ESM: hand-derived values, and property-based fuzzing of parser + scorer."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttpa_ray.score.esm import ESMWeights, esm_score
from ttpa_ray.toolcall import parse_calls, render_calls

TOOLS = [{"name": "book", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "nights": {"type": "integer"}, "price": {"type": "number"},
    "tags": {"type": "array", "items": {"type": "string"}}, "opts": {"type": "object"}},
    "required": ["city", "nights"]}},
    {"name": "cancel", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}]
GOLD = [{"name": "book", "arguments": {"city": "Paris", "nights": 2}}]


def s(pred, gold=GOLD, **kw):
    return esm_score(pred, TOOLS, gold=gold, **kw)


def test_hand_derived_scores():
    # Containment only (0.5 value point on 1 of 2 args): (3+3+1·1+2·1+2·(1.5/2))/11
    r = s([{"name": "book", "arguments": {"city": "Paris, France", "nights": 2}}])
    assert r.score == pytest.approx((3 + 3 + 1 + 2 + 2 * 0.75) / 11) and r.errors == ["value_error"]
    # Case-insensitive equality earns both string points; BFCL-style valid too.
    r = s([{"name": "book", "arguments": {"city": "paris", "nights": 2}}])
    assert r.score == 1.0 and r.valid
    # Missing a required arg: s_req = 1/2; key/type/value 1/2 each.
    r = s([{"name": "book", "arguments": {"city": "Paris"}}])
    assert r.score == pytest.approx((3 + 3 * 0.5 + 0.5 + 2 * 0.5 + 2 * 0.5) / 11)
    assert r.errors == ["missing_required"]
    # Wrong type: "2" for integer: no type point, no value point.
    r = s([{"name": "book", "arguments": {"city": "Paris", "nights": "2"}}])
    assert r.score == pytest.approx((3 + 3 + 1 + 2 * 0.5 + 2 * 0.5) / 11) and r.errors == ["type_error"]
    # int for number is accepted (BFCL), bool for integer is not.
    r = s([{"name": "book", "arguments": {"city": "Paris", "nights": 2, "price": 10}}],
          gold=[{"name": "book", "arguments": {"city": "Paris", "nights": 2, "price": 10.0}}])
    assert r.valid
    assert "type_error" in s([{"name": "book", "arguments": {"city": "Paris", "nights": True}}]).errors
    # Wrong function name: everything else right.
    r = s([{"name": "cancel", "arguments": {"city": "Paris", "nights": 2}}])
    assert r.score == pytest.approx(8 / 11) and r.errors == ["wrong_func_name"]
    # Weights are configurable.
    r = s([{"name": "cancel", "arguments": {"city": "Paris", "nights": 2}}], weights=ESMWeights(name=0))
    assert r.score == 1.0


def test_parallel_calls_are_matched_one_to_one():
    gold = [{"name": "cancel", "arguments": {"id": "a"}}, {"name": "cancel", "arguments": {"id": "b"}}]
    r = s([{"name": "cancel", "arguments": {"id": "b"}}, {"name": "cancel", "arguments": {"id": "a"}}], gold=gold)
    assert r.valid and r.score == 1.0
    r = s([{"name": "cancel", "arguments": {"id": "a"}}], gold=gold)
    assert r.errors == ["wrong_count"] and r.score == pytest.approx(0.5)


def test_irrelevance_nested_and_enum():
    assert s("No tool fits.", gold=[]).valid
    r = s([{"name": "cancel", "arguments": {"id": "x"}}], gold=[])
    assert r.errors == ["unexpected_call"] and r.score == 0.0
    gold = [{"name": "book", "arguments": {"city": "Rome", "nights": 1, "tags": ["a", "b"], "opts": {"k": [1, 2]}}}]
    assert s(gold, gold=gold).valid
    r = s([{"name": "book", "arguments": {"city": "Rome", "nights": 1, "tags": ["a", 3], "opts": {"k": [1, 2]}}}],
          gold=gold)
    assert "type_error" in r.errors
    r = s([{"name": "book", "arguments": {"city": "Rome", "nights": 1, "tags": ["a", "b"], "opts": {"k": [2]}}}],
          gold=gold)
    assert r.errors == ["value_error"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
call_like = st.fixed_dictionaries({"name": st.sampled_from(["book", "cancel", "x"]) | st.text(min_size=1, max_size=8),
                                   "arguments": st.dictionaries(
                                       st.sampled_from(["city", "nights", "price", "tags", "opts", "id", "zz"]),
                                       json_values, max_size=5)})


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text):
    r = parse_calls(text)
    assert r.error in (None, "decode_failed")
    res = s(text)
    assert 0.0 <= res.score <= 1.0 and res.valid == (not res.errors)
    res = s("<tool_call>" + text)
    assert 0.0 <= res.score <= 1.0


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(json_values)
def test_arbitrary_json_never_raises(value):
    for pred in (json.dumps(value), "<tool_call>" + json.dumps(value) + "</tool_call>", value):
        res = s(pred if not isinstance(pred, (dict, str)) or isinstance(pred, str) else [pred])
        assert 0.0 <= res.score <= 1.0


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(call_like, min_size=0, max_size=3), st.lists(call_like, min_size=0, max_size=3))
def test_gold_scores_one_and_any_prediction_in_range(gold, pred):
    assert s(gold, gold=gold).score == pytest.approx(1.0)
    assert s(render_calls(gold) if gold else "no call", gold=gold).score == pytest.approx(1.0)
    res = s(pred, gold=gold)
    assert 0.0 <= res.score <= 1.0 + 1e-12


def test_gold_of_another_type_than_schema_still_scores_one():
    # Found by hypothesis: a concrete gold "" for an integer parameter.
    gold = [{"name": "book", "arguments": {"nights": ""}}]
    assert s(gold, gold=gold).score == 1.0 and s(gold, gold=gold).valid


def test_bad_gold_is_a_value_error_naming_the_problem():
    with pytest.raises(ValueError, match="no function name"):
        s("x", gold=[{"name": "", "arguments": {}}])
    with pytest.raises(ValueError, match="list of acceptable values"):
        esm_score("x", TOOLS, possible_answer=[{"book": {"city": "Paris"}}])
