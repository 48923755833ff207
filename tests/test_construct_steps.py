"""Reversed construction, pure parts: plans, the call grammar, filters, message assembly."""

from __future__ import annotations

import json

import jsonschema
import pytest

from ttpa_ray.construct import steps
from ttpa_ray.toolcall import load_tool

WEATHER = load_tool({"name": "get_weather", "description": "Weather.", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]},
    "where": {"type": "object", "properties": {"lat": {"type": "number"}}}}, "required": ["city"]}})
FX = load_tool({"name": "convert", "description": "FX.", "parameters": {"type": "object", "properties": {
    "amount": {"type": "number"}, "to": {"type": "array", "items": {"type": "string"}}}, "required": ["amount"]}})


def test_plans_are_deterministic_and_in_range():
    domains = {"a": ["t1", "t2", "t3"], "b": ["t4"]}
    p1 = [steps.sample_plan(i, domains, 7, (1, 2), (1, 3), 2) for i in range(50)]
    p2 = [steps.sample_plan(i, domains, 7, (1, 2), (1, 3), 2) for i in range(50)]
    assert [vars(p) for p in p1] == [vars(p) for p in p2]
    for p in p1:
        assert 1 <= len(p.tools) <= 2 and set(p.tools) <= set(domains[p.domain])
        assert len(p.num_calls) == 2 and all(1 <= c <= 3 for c in p.num_calls)
    assert {p.domain for p in p1} == {"a", "b"}
    assert [vars(p) for p in p1] != [vars(steps.sample_plan(i, domains, 8, (1, 2), (1, 3), 2)) for i in range(50)]


def test_call_grammar_accepts_exactly_valid_calls():
    grammar = steps.call_grammar([WEATHER, FX])
    jsonschema.Draft202012Validator.check_schema(grammar)
    ok = [{"name": "get_weather", "arguments": {"city": "Oslo", "where": {"lat": 59.9}}},
          {"name": "convert", "arguments": {"amount": 3, "to": ["EUR"]}}]
    bad = [{"name": "get_weather", "arguments": {}},                                  # missing required
           {"name": "get_weather", "arguments": {"city": "Oslo", "zzz": 1}},          # invented key
           {"name": "get_weather", "arguments": {"city": "Oslo", "where": {"x": 1}}},  # invented nested key
           {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "k"}},        # enum
           {"name": "other", "arguments": {}},
           {"name": "convert", "arguments": {"amount": "3"}}]
    for call in ok:
        jsonschema.validate(call, grammar)
    for call in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(call, grammar)


def test_filters():
    memory = [{"name": "get_weather", "arguments": {"city": "Reykjavik", "where": {"lat": 64.1}}, "result": {}}]
    assert steps.names_tool("Use get_weather for Oslo", ["get_weather"])
    assert steps.names_tool("can you get weather now", ["get_weather"])
    assert not steps.names_tool("How warm is Oslo?", ["get_weather"])
    assert steps.leaks_arguments("weather in reykjavik?", memory)
    assert steps.leaks_arguments('use {"lat": 64.1}', memory)
    assert not steps.leaks_arguments("weather in Iceland's capital?", memory)
    assert steps.normalize_query("Hi, there!") == steps.normalize_query("hi there")


def test_messages_render_through_the_chat_template(tiny_model):
    from transformers import AutoTokenizer

    from ttpa_ray.toolcall import parse_calls

    turn = {"index": 0, "query": "Weather in Oslo?", "answer": "It is 3 C.",
            "memory": [{"name": "get_weather", "arguments": {"city": "Oslo"}, "result": {"temp_c": 3}}]}
    msgs = steps.build_messages([turn])
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[2]["tool_call_id"] == msgs[1]["tool_calls"][0]["id"]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = tok.apply_chat_template(msgs, tools=[WEATHER.openai()], tokenize=False)
    assert '{"temp_c": 3}' in text
    call_text = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert parse_calls(call_text).calls[0].arguments == {"city": "Oslo"}
    json.dumps(msgs)


def test_clean_text():
    assert steps.clean_text('The user\'s message: "How warm is Oslo?"') == "How warm is Oslo?"
    assert steps.clean_text("User: Find me a hotel") == "Find me a hotel"
    assert steps.clean_text("How warm is Oslo?") == "How warm is Oslo?"
