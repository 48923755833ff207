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


DOMAINS = {"a": ["t1", "t2", "t3"], "b": ["t4", "t5"], "c": ["t6"]}
EXAMPLES = {f"t{i}": [{"x": i}, {"x": 10 * i}, {"x": 100 * i}] for i in range(1, 7)}


def _plans(kind, seed=7, distractors=(1, 2), turns=1):
    return [steps.sample_plan(i, kind, DOMAINS, EXAMPLES, seed, distractors, (2, 3), turns) for i in range(40)]


def test_plans_are_deterministic():
    assert [vars(p) for p in _plans("multiple")] == [vars(p) for p in _plans("multiple")]
    assert [vars(p) for p in _plans("multiple")] != [vars(p) for p in _plans("multiple", seed=8)]


@pytest.mark.parametrize("kind", ["single", "multiple", "parallel", "parallel_multiple", "irrelevance"])
def test_each_kind_plans_its_calls_and_offers_distractors(kind):
    for p in _plans(kind):
        calls = [c for step in p.turns[0]["steps"] for c in step]
        used = {c[0] for c in calls}
        assert used <= set(p.tools) and all(c[1] in EXAMPLES[c[0]] for c in calls)
        unused = set(p.tools) - used
        # distractors [1, 2]; irrelevance offers one more, in place of the needed tool
        assert 1 + (kind == "irrelevance") <= len(unused) <= 2 + (kind == "irrelevance"), p
        steps_ = p.turns[0]["steps"]
        if kind == "single":
            assert [len(s) for s in steps_] == [1]
        elif kind == "multiple":
            assert len(steps_) >= 2 and all(len(s) == 1 for s in steps_) and len(used) == len(steps_)
        elif kind == "parallel":
            assert len(steps_) == 1 and len(steps_[0]) >= 2 and len(used) == 1
            assert len({json.dumps(c[1]) for c in steps_[0]}) == len(steps_[0])  # different arguments
        elif kind == "parallel_multiple":
            assert len(steps_) == 1 and len(steps_[0]) >= 2 and len(used) == len(steps_[0])
        else:
            need = p.turns[0]["need"]
            assert steps_ == [] and need[0] in DOMAINS[p.domain]
            assert not set(p.tools) & set(DOMAINS[p.domain])  # nothing offered fits
    assert len({p.tools[0] for p in _plans(kind)}) > 1  # shuffled


def test_the_count_of_offered_tools_does_not_tell_whether_to_call():
    # Call and no-call instances offer the same numbers of tools (BFCL offers one tool in simple,
    # parallel and irrelevance alike); they once differed: irrelevance 1-2, single 2-3.
    counts = {k: {len(p.tools) for p in _plans(k, distractors=(0, 2))} for k in ("single", "parallel", "irrelevance")}
    assert counts == {"single": {1, 2, 3}, "parallel": {1, 2, 3}, "irrelevance": {1, 2, 3}}


def test_zero_distractors_and_follow_up_turns():
    for p in _plans("single", distractors=(0, 0), turns=3):
        assert len(p.tools) == 1 and len(p.turns) == 3
        assert all(len(t["steps"]) == 1 and t["steps"][0][0][0] in p.tools for t in p.turns)


def test_kind_quota_follows_the_mix_exactly():
    kinds = steps.kind_quota({"single": 0.3, "multiple": 0.2, "parallel": 0.15, "parallel_multiple": 0.15,
                              "irrelevance": 0.2}, 20, 0)
    assert {k: kinds.count(k) for k in set(kinds)} == {"single": 6, "multiple": 4, "parallel": 3,
                                                       "parallel_multiple": 3, "irrelevance": 4}
    assert kinds != sorted(kinds)


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

    oslo = {"name": "get_weather", "arguments": {"city": "Oslo"}, "result": {"temp_c": 3}}
    rome = {"name": "get_weather", "arguments": {"city": "Rome"}, "result": {"temp_c": 19}}
    turns = [{"index": 0, "query": "Weather in Oslo and Rome?", "answer": "3 C and 19 C.", "steps": [[oslo, rome]]},
             {"index": 1, "query": "Can you book me a table?", "answer": "Sorry, I can't book tables.", "steps": []}]
    msgs = steps.build_messages(turns)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool", "assistant", "user", "assistant"]
    assert [m["tool_call_id"] for m in msgs[2:4]] == [c["id"] for c in msgs[1]["tool_calls"]]  # one message, 2 calls
    assert "tool_calls" not in msgs[6]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = tok.apply_chat_template(msgs, tools=[WEATHER.openai()], tokenize=False)
    assert '{"temp_c": 3}' in text and '{"temp_c": 19}' in text
    call_text = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert [c.arguments for c in parse_calls(call_text).calls] == [{"city": "Oslo"}, {"city": "Rome"}]
    json.dumps(msgs)


def test_clean_text():
    assert steps.clean_text('The user\'s message: "How warm is Oslo?"') == "How warm is Oslo?"
    assert steps.clean_text("User: Find me a hotel") == "Find me a hotel"
    assert steps.clean_text("How warm is Oslo?") == "How warm is Oslo?"


def test_irrelevance_twins_keep_the_query_and_offer_no_tool_of_the_needed_domains():
    from ttpa_ray.construct.stage import plans
    from ttpa_ray.construct.twins import add_twins
    from ttpa_ray.config import ConstructConfig
    from ttpa_ray.instances import turn_rows
    from ttpa_ray.tools.catalog import resolve_catalog

    catalog = resolve_catalog("bundled")
    domain = {t.name: t.domain for t in catalog}
    schema = {t.name: t.openai() for t in catalog}
    rows = []  # instances as construct writes them, from real plans (calls = the hints)
    for p in plans(ConstructConfig(num_instances=12, distractors=[1, 2]), seed=3):
        turn = json.loads(p["turns"])[0]
        msgs = [{"role": "user", "content": f"request {p['id']}"}]
        if turn["steps"]:
            for step in turn["steps"]:
                msgs.append({"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": n, "arguments": a}} for n, a in step]})
                msgs += [{"role": "tool", "content": "{}"} for _ in step]
            msgs.append({"role": "assistant", "content": "Done."})
        else:
            msgs.append({"role": "assistant", "content": "I can't."})
        rows.append({"id": p["id"], "kind": p["kind"], "domain": p["domain"], "twin_of": None,
                     "tools": json.dumps([schema[n] for n in p["tools"]]), "messages": json.dumps(msgs)})
    calls = [r for r in rows if r["kind"] != "irrelevance"]
    assert add_twins(rows, 0.0, 0, catalog, next_id=12) == (rows, {"made": 0, "no_other_domain": 0})
    out, counts = add_twins(rows, 1.0, 0, catalog, next_id=12)
    assert out[:12] == rows and counts == {"made": len(calls), "no_other_domain": 0}
    twins = out[12:]
    assert [t["id"] for t in twins] == list(range(12, 12 + len(calls)))
    for t in twins:
        src = rows[t["twin_of"]]
        used = {c["function"]["name"] for m in json.loads(src["messages"]) for c in m.get("tool_calls", [])}
        offered = [x["function"]["name"] for x in json.loads(t["tools"])]
        assert offered and not {domain[n] for n in offered} & ({domain[n] for n in used} | {src["domain"]})
        assert len(offered) == len(json.loads(src["tools"]))  # as many tools as its source
        (turn,) = turn_rows([t])  # one no-call gold turn: the same request, declined
        assert turn["gold_json"] == "[]" and json.loads(turn["prompt_json"]) == json.loads(src["messages"])[:1]
        assert turn["gold_text"].startswith("I'm sorry, I can't do that here")
    assert len(add_twins(rows, 0.5, 0, catalog, next_id=12)[0]) == 12 + round(0.5 * len(calls))
    one_domain = [t for t in catalog if t.domain == "weather"]  # nowhere else to take tools from
    only_weather = [{**calls[0], "domain": "weather", "tools": json.dumps([schema["get_current_weather"]]),
                     "messages": json.dumps([{"role": "user", "content": "Oslo?"}, {"role": "assistant", "content": "",
                                             "tool_calls": [{"type": "function", "function": {
                                                 "name": "get_current_weather", "arguments": {"city": "Oslo"}}}]}])}]
    assert add_twins(only_weather, 1.0, 0, one_domain, next_id=12) == (only_weather, {"made": 0, "no_other_domain": 1})
