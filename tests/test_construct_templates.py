"""Query templates and fallback answers (ttpa_ray/construct/templates.py): a seed query built
from the templates determines its calls (grounding.ungrounded finds nothing missing), and a
fallback answer states values of the results (grounding.answer_grounded)."""

from __future__ import annotations

import pytest

from ttpa_ray.construct.grounding import answer_grounded, ungrounded
from ttpa_ray.construct.steps import declines, is_request
from ttpa_ray.construct.templates import (fallback_answer, fill, generic_query, no_tool_answer, placeholders,
                                          seed_query)
from ttpa_ray.toolcall import ToolSchema
from ttpa_ray.tools.bundled import CATALOG, call_tool

TOOLS = [t.openai() for t in CATALOG]
EXAMPLES = [pytest.param(t, ex, id=f"{t.name}-{i}") for t in CATALOG for i, ex in enumerate(t.examples)]
BY_DOMAIN: dict[str, list] = {}
for _t in CATALOG:
    BY_DOMAIN.setdefault(_t.domain, []).append(_t)
PAIRS = [pytest.param(a, b, id=f"{a.name}+{b.name}") for tools in BY_DOMAIN.values() for a, b in zip(tools, tools[1:])]

RESERVE = ToolSchema("reserve_table", "Reserve a table at a restaurant for a party. Returns a confirmation code.",
                     {"restaurant": {"type": "string", "description": "Restaurant name."},
                      "party_size": {"type": "integer", "description": "Number of diners."},
                      "time": {"type": "string", "description": "Time HH:MM."},
                      "outdoor": {"type": "boolean", "description": "Sit outside."}},
                     ("restaurant", "party_size", "time"), {})


def _conv(query, *calls):
    return [{"role": "user", "content": query},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name, "arguments": args}}
                                                                for name, args in calls]}]


# --------------------------------------------------------------------------- the bundled templates


def test_every_bundled_tool_has_a_template():
    assert [t.name for t in CATALOG if not t.query_template] == []


@pytest.mark.parametrize("tool", CATALOG, ids=lambda t: t.name)
def test_a_template_names_exactly_the_parameters_of_its_tool(tool):
    assert placeholders(tool.query_template) == set(tool.schema.properties)
    with pytest.raises(ValueError, match="not a parameter"):
        fill(tool.query_template + "[ {no_such_param}]", dict(tool.examples[0]), tool.schema.properties)


@pytest.mark.parametrize("tool", CATALOG, ids=lambda t: t.name)
def test_no_template_names_its_tool(tool):
    text = tool.query_template.lower()
    assert tool.name.lower() not in text and tool.name.lower().replace("_", " ") not in text


@pytest.mark.parametrize("tool,example", EXAMPLES)
def test_the_seed_of_every_example_determines_its_call(tool, example):
    query = seed_query([(tool.schema, tool.query_template, example)])
    assert ungrounded(_conv(query, (tool.name, example)), TOOLS) == []
    assert "{" not in query and "[" not in query and "(with " not in query  # every argument placed by the template
    assert all(t.name not in query for t in CATALOG)
    assert is_request(query) and is_request("Thanks. " + query)  # passes the query_not_request filter


@pytest.mark.parametrize("first,second", PAIRS)
def test_a_two_call_seed_determines_both_calls(first, second):
    a, b = first.examples[-1], second.examples[0]
    query = seed_query([(first.schema, first.query_template, a), (second.schema, second.query_template, b)])
    assert ungrounded(_conv(query, (first.name, a), (second.name, b)), TOOLS) == []
    assert " Also, " in query


def test_a_three_call_seed_joins_its_parts_in_order():
    t = next(t for t in CATALOG if t.name == "convert_currency")
    calls = [(t.schema, t.query_template, {"amount": n, "from_currency": "EUR", "to_currency": "JPY"})
             for n in (10, 20, 30)]
    assert seed_query(calls) == ("How much is 10 EUR in JPY? Also, how much is 20 EUR in JPY? "
                                 "Then, how much is 30 EUR in JPY?")


def test_seed_query_needs_a_call():
    with pytest.raises(ValueError, match="at least one call"):
        seed_query([])


# --------------------------------------------------------------------------- fill


PROPS = {"city": {"type": "string"}, "days": {"type": "integer", "default": 3},
         "units": {"type": "string", "enum": ["metric", "imperial"]}, "hourly": {"type": "boolean"},
         "start_date": {"type": "string"}, "guest": {"type": "object", "properties": {
             "name": {"type": "string"}, "email": {"type": "string"}}}}


def test_fill_keeps_a_segment_only_when_all_its_placeholders_are_there():
    t = "Weather in {city}[ for {days} days][ from {start_date} for {days} days][ (hourly: {hourly})]?"
    assert fill(t, {"city": "Oslo"}) == "Weather in Oslo?"
    assert fill(t, {"city": "Oslo", "days": 4}) == "Weather in Oslo for 4 days?"
    assert fill(t, {"city": "Oslo", "days": 4.0, "start_date": "2026-03-05", "hourly": False}) == (
        "Weather in Oslo for 4 days from 2026-03-05 for 4 days (hourly: no)?")


def test_fill_renders_values_as_a_person_writes_them():
    t = "{a}|{b}|{c}|{d}|{e}|{f}"
    assert fill(t, {"a": 4.5, "b": 12.0, "c": ["x", "y", "z"], "d": True, "e": {"first_name": "Ana", "age": 30},
                    "f": [{"k": 1}, {"k": 2}]}) == "4.5|12|x, y and z|yes|first name Ana, age 30|k 1; k 2"


def test_fill_appends_unplaced_values_but_not_free_choices():
    t = "Weather in {city}?"
    args = {"city": "Oslo", "start_date": "2026-03-05", "days": 3, "units": "imperial", "hourly": True}
    assert fill(t, args, PROPS) == "Weather in Oslo (with start date 2026-03-05)?"  # default, enum, boolean unsaid
    assert fill(t, {**args, "days": 5}, PROPS) == "Weather in Oslo (with start date 2026-03-05, days 5)?"
    assert fill("Book for {guest.name}.", {"guest": {"name": "Ana", "email": "a@x.io"}}, PROPS) == (
        "Book for Ana (with guest email a@x.io).")


def test_fill_says_how_to_fix_a_bad_template():
    with pytest.raises(ValueError, match="not a parameter"):
        fill("Weather in {cty}?", {"city": "Oslo"}, PROPS)
    with pytest.raises(ValueError, match="not a parameter"):
        fill("For {guest.phone}.", {"guest": {}}, PROPS)
    with pytest.raises(ValueError, match=r"inside \[\.\.\.\]"):
        fill("Weather in {city} from {start_date}?", {"city": "Oslo"}, PROPS)


# --------------------------------------------------------------------------- generic queries


@pytest.mark.parametrize("args", [{"restaurant": "Chez Lou", "party_size": 4, "time": "19:30"},
                                  {"restaurant": "Casa Pepe", "party_size": 12, "time": "20:00", "outdoor": True}])
def test_a_generic_query_is_grounded(args):
    query = generic_query(RESERVE, args)
    tools = [RESERVE.openai()]
    assert ungrounded(_conv(query, ("reserve_table", args)), tools) == []
    assert query.startswith("Can you help me: reserve a table at a restaurant for a party?")
    assert "reserve_table" not in query and "confirmation" not in query  # only the first sentence
    assert seed_query([(RESERVE, None, args)]) == query


def test_a_generic_query_walks_lists_and_objects():
    schema = ToolSchema("plan", "", {"stops": {"type": "array"}, "who": {"type": "object"}}, (), {})
    args = {"stops": ["Porto", "Braga"], "who": {"name": "Ana Silva", "age": 41}}
    query = generic_query(schema, args)
    assert ungrounded(_conv(query, ("plan", args)), [schema.openai()]) == []
    assert query == "Can you help me with a request? Use stops Porto and Braga; who name Ana Silva, age 41."


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("tool,example", EXAMPLES)
def test_the_fallback_answer_of_every_example_is_grounded(tool, example):
    memory = [{"name": tool.name, "arguments": example, "result": call_tool(tool, example)}]
    answer = fallback_answer(memory)
    assert answer_grounded(answer, memory), answer
    assert len(answer) <= 500 and tool.name not in answer


def test_a_fallback_answer_covers_each_call_of_the_turn():
    memory = [{"name": "a", "arguments": {"city": "Oslo"}, "result": {"city": "Oslo", "temp_c": 4, "sky": "fog"}},
              {"name": "b", "arguments": {"amount": 10}, "result": {"amount": 10, "converted": 1620.5}}]
    assert fallback_answer(memory) == "Here is what I found: temp c 4, sky fog; converted 1620.5."
    assert answer_grounded(fallback_answer(memory[1:]), memory[1:])


def test_a_fallback_answer_of_echoes_only_says_so_and_is_not_grounded():
    memory = [{"name": "a", "arguments": {"city": "Oslo"}, "result": {"city": "Oslo", "ok": True}}]
    assert not answer_grounded(fallback_answer(memory), memory)


WEATHER = [{"name": "get_current_weather", "arguments": {"city": "Lisbon", "units": "metric"},
            "result": {"city": "Lisbon", "units": "metric", "temperature": 18.0, "condition": "Partly cloudy",
                       "humidity_pct": 70, "observed": "2025-06-02", "is_day": True, "alerts": None}}]


@pytest.mark.parametrize("answer,grounded", [
    ("It is 18 °C and partly cloudy in Lisbon.", True),
    ("Humidity is at seventy percent... no wait, 70%.", True),
    ("Observed on June 2.", True),                            # a date in its written form
    ("Lisbon is a lovely city; enjoy your stay!", False),      # unrelated prose and an echo of the query
    ("The weather in Lisbon, in metric units.", False),        # only argument values
    ("Yes, it is day time and there are no alerts.", False),   # booleans and None do not count
])
def test_answer_grounded(answer, grounded):
    assert answer_grounded(answer, WEATHER) is grounded


def test_no_tool_answer_declines_without_naming_a_tool():
    text = no_tool_answer("Book a table at a restaurant. Returns a code.")
    assert text.startswith("I'm sorry, I can't do that here: none of the tools I have covers it (book a table at a "
                           "restaurant).")
    assert "Returns" not in text and len(text) < 200
    assert "can't do that" in no_tool_answer("") and "()" not in no_tool_answer("")
    noun = no_tool_answer("Size, lifespan and temperament of a dog breed.")
    assert "(size, lifespan and temperament of a dog breed)" in noun and declines(noun)
