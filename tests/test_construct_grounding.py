"""The well-posedness check of constructed instances (ttpa_ray/construct/grounding.py): every
gold argument value must be readable from the user text so far or an earlier tool result."""

from __future__ import annotations

import json

from ttpa_ray.construct.grounding import ungrounded

TOOLS = [
    {"name": "search_flights", "parameters": {"type": "object", "properties": {
        "origin": {"type": "string"}, "destination": {"type": "string"}, "date": {"type": "string"},
        "direct": {"type": "boolean"}, "max_price": {"type": "number"},
        "cabin": {"type": "string", "enum": ["economy", "business"]},
        "passengers": {"type": "integer", "default": 1}}}},
    {"name": "book_flight", "parameters": {"type": "object", "properties": {
        "flight_id": {"type": "string"}, "names": {"type": "array", "items": {"type": "string"}}}}},
]


def _call(name, args):
    return {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name, "arguments": args}}]}


def test_values_from_the_query_in_other_formats_are_found():
    msgs = [{"role": "user", "content": "Find a direct business flight from Lisbon to Oslo on March 5, 2026, "
                                        "under $1,200."},
            _call("search_flights", {"origin": "Lisbon", "destination": "OSLO", "date": "2026-03-05",
                                     "direct": True, "max_price": 1200.0, "cabin": "business", "passengers": 1})]
    assert ungrounded(msgs, TOOLS) == []


def test_an_id_chained_from_an_earlier_tool_result_is_found_but_not_before_it():
    search = _call("search_flights", {"origin": "Lisbon", "destination": "Oslo"})
    result = {"role": "tool", "content": json.dumps({"flights": [{"id": "TP1234", "price": 310}]})}
    book = _call("book_flight", {"flight_id": "TP1234", "names": ["Ana Silva"]})
    user = {"role": "user", "content": "Book the first flight from Lisbon to Oslo for Ana Silva."}
    assert ungrounded([user, search, result, book], TOOLS) == []
    assert ungrounded([user, book, result], TOOLS) == ["book_flight.flight_id='TP1234'"]  # the result came later


def test_values_the_conversation_does_not_give_are_listed_each():
    msgs = [{"role": "user", "content": "To help, I'll be happy to assist. I'll be happy to assist."},
            _call("search_flights", {"origin": "Tokyo", "max_price": 300, "passengers": 2, "cabin": "economy"}),
            {"role": "tool", "content": "{}"},
            _call("book_flight", {"flight_id": "X9", "names": ["Mike", "Ana"]})]
    assert ungrounded(msgs, TOOLS) == ["search_flights.origin='Tokyo'", "search_flights.max_price=300",
                                       "search_flights.passengers=2", "book_flight.flight_id='X9'",
                                       "book_flight.names[0]='Mike'", "book_flight.names[1]='Ana'"]


def test_numbers_match_by_value_not_by_substring():
    msgs = [{"role": "user", "content": "Flights under 1500 for two people"},
            _call("search_flights", {"max_price": 150, "passengers": 2})]
    assert ungrounded(msgs, TOOLS) == ["search_flights.max_price=150"]  # "1500" is not 150; "two" is 2


def _batch_and_state(cfg, origin: str, need: bool = False):
    from ttpa_ray.construct.stage import ConstructBatch
    from ttpa_ray.tools.tool import Tool
    from ttpa_ray.toolcall import load_tool

    batch = ConstructBatch.__new__(ConstructBatch)   # the filters only, no engine
    batch.cfg = cfg
    tool = Tool(schema=load_tool(TOOLS[0], 0), domain="travel", query_template="Any flights out of {origin}?")
    batch.tools = {tool.name: tool}
    call = {"name": "search_flights", "arguments": {"origin": origin}}
    plan = {"steps": [] if need else [[["search_flights", None]]], "need": ["search_flights", call["arguments"]]
            if need else None}
    state = {"schemas": [] if need else [tool.schema], "status": None, "reason": "", "turns": [],
             "cur": {"index": 0, "plan": plan, "steps": [] if need else [[call | {"result": {"flights": []}}]]}}
    return batch, state


def test_the_construct_filter_names_ungrounded_queries():
    from ttpa_ray.config import ConstructConfig
    from ttpa_ray.construct import steps

    batch, s = _batch_and_state(ConstructConfig(), "Tokyo")  # on by default
    problem, detail = batch._query_problem(s, "How many bats can Mike hold?", "stop")
    assert problem == "query_ungrounded" and "search_flights.origin='Tokyo'" in detail
    assert batch._query_problem(s, "Mike flies out of Tokyo today.", "stop")[0] == "query_not_request"
    assert "query_ungrounded" in steps.FILTERS and "answer_ungrounded" in steps.FILTERS  # counted in the manifest
    assert batch._query_problem(s, "Any flights out of Tokyo today?", "stop") == ("", "")
    assert batch._query_problem(s, "Any flights out of Tokyo today? Use search_flights", "stop")[0] == \
        "query_names_tool"
    off, s = _batch_and_state(ConstructConfig(filters={"require_grounded_query": False}), "Tokyo")
    assert off._query_problem(s, "How many flights can Mike book?", "stop") == ("", "")
    # A no-tool-fits turn: its query must still state what it asks for (the needed call's values).
    batch, s = _batch_and_state(ConstructConfig(), "Tokyo", need=True)
    assert batch._query_problem(s, "Find me something nice.", "stop")[0] == "query_ungrounded"
    assert batch._query_problem(s, "Any flights out of Tokyo today?", "stop") == ("", "")


def test_generated_texts_that_talk_about_the_task_or_ask_for_something_else_are_dropped():
    from ttpa_ray.config import ConstructConfig

    batch, s = _batch_and_state(ConstructConfig(), "Tokyo")
    assert batch._query_problem(s, "Rewrite this request: any flights out of Tokyo?", "stop")[0] == "talks_about_task"
    assert batch._query_problem(s, "Is the sushi in Tokyo good?", "stop")[0] == "query_off_topic"  # values, not the ask
    assert batch._query_problem(s, "Are there any flights leaving Tokyo tonight?", "stop") == ("", "")
    assert batch._answer_problem(s, "The user's goal was to fly; the flights list is empty.", "stop") == \
        "talks_about_task"
    off, s = _batch_and_state(ConstructConfig(filters={"forbid_task_talk": False}), "Tokyo")
    assert off._query_problem(s, "Is the sushi in Tokyo good?", "stop") == ("", "")


def test_the_answer_filter_wants_a_result_value_or_a_decline():
    from ttpa_ray.config import ConstructConfig

    batch, s = _batch_and_state(ConstructConfig(), "Tokyo")
    s["cur"]["steps"][0][0]["result"] = {"flights": [{"id": "NH 106", "price": 812}]}
    assert batch._answer_problem(s, "Flight NH 106 costs 812 dollars.", "stop") == ""
    assert batch._answer_problem(s, "Have a wonderful trip to Japan!", "stop") == "answer_ungrounded"
    assert batch._answer_problem(s, "Flight NH 106 costs", "length") == "truncated_answer"
    batch, s = _batch_and_state(ConstructConfig(), "Tokyo", need=True)
    assert batch._answer_problem(s, "Sorry, I can't search flights here; try an airline site.", "stop") == ""
    assert batch._answer_problem(s, "Flights from Tokyo cost 300 dollars.", "stop") == "answer_ungrounded"


def test_a_list_of_enum_choices_may_be_paraphrased():
    tools = [{"name": "convert", "parameters": {"type": "object", "properties": {
        "value": {"type": "number"}, "to": {"type": "array", "items": {"type": "string", "enum": ["F", "K"]}}}}}]
    msgs = [{"role": "user", "content": "What is 21.5 degrees in fahrenheit and kelvin?"},
            _call("convert", {"value": 21.5, "to": ["F", "K"]})]
    assert ungrounded(msgs, tools) == []
    assert ungrounded(msgs[:1] + [_call("convert", {"value": 22, "to": ["F"]})], tools) == ["convert.value=22"]


def test_a_call_that_repeats_an_earlier_one_is_an_invalid_call():
    """Two identical parallel calls, or a follow-up asking for the same call again: nothing new
    for the query to determine."""
    from ttpa_ray.config import ConstructConfig

    batch, s = _batch_and_state(ConstructConfig(), "Tokyo")
    s["cur"]["steps"].append([])
    batch._take_call(s, json.dumps({"name": "search_flights", "arguments": {"origin": "Osaka"}}), "")
    assert s["status"] is None and s["cur"]["steps"][-1] == [{"name": "search_flights", "arguments": {"origin": "Osaka"}}]
    hint = {"name": "search_flights", "arguments": {"origin": "Nagoya"}}
    batch._take_call(s, json.dumps({"name": "search_flights", "arguments": {"origin": "Tokyo"}}), "", hint)
    assert s["status"] is None and s["cur"]["steps"][-1][-1] == hint and s["calls_from_hint"] == 1  # the hint instead
    batch._take_call(s, '{"name": "search_flights", "arguments": {"origin": "Os', "", hint)  # cut, hint used already
    assert s["status"] == "invalid_call" and "JSONDecodeError" in s["reason"]
    off, s = _batch_and_state(ConstructConfig(templates=False), "Tokyo")
    s["cur"]["steps"].append([])
    off._take_call(s, json.dumps({"name": "search_flights", "arguments": {"origin": "Tokyo"}}), "", hint)
    assert s["status"] == "invalid_call" and "repeats an earlier call" in s["reason"]


def test_answer_attempts_zero_writes_the_template_answer_without_the_generator():
    from ttpa_ray.config import ConstructConfig

    batch, s = _batch_and_state(ConstructConfig(answer_attempts=0), "Tokyo")
    s["cur"]["steps"][0][0]["result"] = {"flights": [{"id": "NH 106", "price": 812}]}
    batch._chat = None  # no generator: calling it would fail
    batch._answers([s])
    assert s["status"] is None and s["cur"]["answer_path"] == "template" and "NH 106" in s["cur"]["answer"]
    import pytest

    with pytest.raises(ValueError, match="answer_attempts: 0"):
        ConstructConfig(answer_attempts=0, templates=False)
