"""Tool schemas and the parser: formats models write, malformed schemas, never raising."""

from __future__ import annotations

import json

import pytest

from ttpa_ray.toolcall import SchemaError, ToolCall, load_tools, parse_calls, render_calls, render_with_template

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"]}}}


def test_openai_and_bare_forms_load():
    bare = WEATHER["function"]
    a, b = load_tools([WEATHER, dict(bare, name="other")])
    assert a.name == "get_weather" and a.required == ("city",) and b.name == "other"
    assert a.openai()["function"]["parameters"]["required"] == ["city"]


@pytest.mark.parametrize("tool, needle", [
    ({"type": "function", "function": {"description": "x"}}, "tools[0]: `name` is missing"),
    ({"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "strng"}}}},
     "tool 'f': parameters.properties.a.type 'strng' is not a JSON Schema type"),
    ({"name": "f", "parameters": {"type": "object", "properties": {}, "required": ["x"]}},
     "parameters.required names ['x'], which are not in properties"),
    ({"name": "f", "parameters": "oops"}, "tools[0] (f): parameters must be a JSON Schema object"),
    ({"name": "f", "parameters": {"type": "array"}}, "parameters.type must be 'object'"),
    ("not a tool", "tools[0]: a tool must be a JSON object"),
])
def test_malformed_schema_names_tool_and_field(tool, needle):
    with pytest.raises(SchemaError) as info:
        load_tools([tool])
    assert needle in str(info.value)


def test_all_malformed_tools_reported_at_once():
    with pytest.raises(SchemaError) as info:
        load_tools([{"name": "a", "parameters": {"type": "array"}}, WEATHER, {"description": "no name"}, WEATHER])
    msg = str(info.value)
    assert "tools[0] (a)" in msg and "tools[2]" in msg and "duplicate tool names: ['get_weather']" in msg


CALL = ToolCall("get_weather", {"city": "Paris"})


@pytest.mark.parametrize("text, calls", [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', [CALL]),
    ('Sure!\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
     '<tool_call>{"name": "f", "arguments": {}}</tool_call>', [CALL, ToolCall("f", {})]),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}', [CALL]),          # unterminated
    ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', [CALL]),           # string args
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', [CALL]),                    # Llama 3 JSON
    ('[{"name": "get_weather", "arguments": {"city": "Paris"}}]', [CALL]),
    ('```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```', [CALL]),
    ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', [CALL]),       # Mistral
    ('{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}', [CALL]),
    ('{"tool_calls": [{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]}', [CALL]),
    ('get_weather(city="Paris")', [CALL]),                                                   # pythonic
    ('[get_weather(city="Paris"), f()]', [CALL, ToolCall("f", {})]),
    ("The weather is fine.", []),
    ("", []),
])
def test_parse_formats(text, calls):
    r = parse_calls(text)
    assert r.error is None, r.reason
    assert r.calls == calls


@pytest.mark.parametrize("text, reason", [
    ('<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>', "not valid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', "no function name"),
    ('<tool_call>{"name": "f", "arguments": "{bad"}</tool_call>', "string that is not JSON"),
    ('<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>', "must be an object"),
    ('{"name": "f", "arguments": {', "starts like JSON"),
    ('{"answer": 42}', "not a tool call"),
])
def test_undecodable_is_decode_failed_with_reason(text, reason):
    r = parse_calls(text)
    assert r.error == "decode_failed" and r.calls == [] and reason in r.reason


def test_render_roundtrip_and_template(tiny_model):
    from transformers import AutoTokenizer

    calls = [CALL, ToolCall("f", {"x": [1, {"y": "é"}]})]
    assert parse_calls(render_calls(calls)).calls == calls
    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = render_with_template(tok, [{"role": "user", "content": "hi"}], calls, tools=[WEATHER])
    assert text.endswith("<|im_end|>\n") and parse_calls(text.removesuffix("<|im_end|>\n")).calls == calls
    assert json.loads(text.split("<tool_call>\n")[1].split("\n</tool_call>")[0])["name"] == "get_weather"


@pytest.mark.parametrize("model", ["tiny_model", "smollm2"])
def test_parallel_calls_render_as_blocks_that_parse_back(model, request):
    """One assistant message with two calls (a parallel step) -> one <tool_call> block per call,
    through each bundled model's real chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(model))
    calls = [CALL, ToolCall("get_weather", {"city": "Oslo", "unit": "c"})]
    text = render_with_template(tok, [{"role": "user", "content": "Paris and Oslo?"}], calls, tools=[WEATHER])
    assert text.count("<tool_call>") == 2 and text.count("</tool_call>") == 2
    assert parse_calls(text.removesuffix("\n").removesuffix(tok.eos_token)).calls == calls


@pytest.mark.parametrize("model", ["tiny_model", "smollm2"])
def test_no_call_turn_renders_as_the_text_answer(model, request):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(model))
    answer = "None of my tools can book a table, but the place is open until 22:00."
    text = render_with_template(tok, [{"role": "user", "content": "Book a table?"}], [], tools=[WEATHER],
                                content=answer)
    assert text.removesuffix("\n").removesuffix(tok.eos_token) == answer
    assert parse_calls(answer).calls == [] and parse_calls(answer).error is None
