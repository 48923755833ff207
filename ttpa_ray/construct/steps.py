"""Reversed construction, the pure parts: plans, prompts, the call grammar, filters, the instance.

No Ray, no engine: every function takes plain data and is tested without a cluster. The
stage in :mod:`ttpa_ray.construct.stage` drives these steps over a generator engine.

The reversed order (TTPA): scenario -> tool calls step by step with a memory of calls and
results -> final answer -> only then the user query that the answer answers. The query step
is shown the exact values it has to state, and the filters check that it does
(:mod:`ttpa_ray.construct.grounding`); :mod:`ttpa_ray.construct.templates` gives the seeds it
rewrites.

Plans (:func:`sample_plan`) fix the kind of each instance (``construct.mix``), the offered
tools (the used ones plus distractors, shuffled) and per turn its steps: one assistant message
each, several calls in one message for the parallel kinds, none for a no-tool-fits turn (its
``need``: the call a tool that is not offered would make).

Grounding (our addition for executable catalogs): each planned call carries one known-good
example call of its tool from the catalog (its ``hint``); the scenario is built around those
details and the call prompt shows them. A strong generator varies them; a 135M generator mostly
copies them, which is what makes its calls execute against the bundled data.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from ttpa_ray.toolcall import ToolSchema, json_schema_types

SYSTEM = "You write realistic data for training AI assistants that use tools. Follow the instructions exactly."


def tool_brief(t: ToolSchema) -> str:
    params = ", ".join(f"{k}{'' if k in t.required else '?'}" for k in t.properties)
    return f"- {t.name}({params}): {t.description}"


# --------------------------------------------------------------------------- sampling


@dataclass
class Plan:
    """What the sampler fixes before any generation: the kind, the offered tools, and per
    turn the calls to make (tool name + the known-good example call it is built around)."""

    instance_id: int
    domain: str
    kind: str
    tools: list[str]
    """Offered tools, shuffled: the used ones and the distractors."""
    turns: list[dict[str, Any]]
    """Per turn ``{"steps": [[[tool, hint], ...], ...], "need": [tool, hint] | None}``: each step
    is one assistant message (several calls: parallel); ``need`` is the call a no-tool-fits
    turn would need (its tool is not offered)."""
    constraints: dict[str, Any] = field(default_factory=dict)


def kind_quota(mix: dict[str, float], n: int, seed: int) -> list[str]:
    """Kinds of ``n`` instances in the shares of ``mix`` (largest remainder, so every kind with
    a share gets its count when n allows), shuffled by ``seed``.

    >>> sorted(kind_quota({"single": 0.5, "parallel": 0.25, "irrelevance": 0.25}, 8, 0))
    ['irrelevance', 'irrelevance', 'parallel', 'parallel', 'single', 'single', 'single', 'single']
    """
    total = sum(mix.values())
    exact = {k: n * v / total for k, v in mix.items() if v > 0}
    counts = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))[:n - sum(counts.values())]:
        counts[k] += 1
    kinds = [k for k in mix if k in counts for _ in range(counts[k])]
    random.Random(f"kinds:{seed}").shuffle(kinds)
    return kinds


def _hint(rng: random.Random, examples: dict[str, list[dict[str, Any]]], name: str,
          avoid: list[dict[str, Any]] = ()) -> dict[str, Any] | None:
    pool = [e for e in examples.get(name, []) if e not in avoid] or examples.get(name, [])
    return rng.choice(pool) if pool else None


def sample_plan(instance_id: int, kind: str, domains: dict[str, list[str]], examples: dict[str, list[dict[str, Any]]],
                seed: int, distractors: tuple[int, int], calls_range: tuple[int, int], turns: int) -> Plan:
    """Deterministic per (seed, instance id). ``examples``: known-good argument dicts per tool
    (empty lists when the catalog has none; the generator then invents the values)."""
    rng = random.Random(f"{seed}:{instance_id}")
    names = sorted({n for pool in domains.values() for n in pool})
    domain = rng.choice(sorted(d for d in domains if len(domains[d]) >= (2 if kind in ("multiple",
                                                                                      "parallel_multiple") else 1))
                        or sorted(domains))
    pool = sorted(domains[domain])
    n_calls = rng.randint(*calls_range)
    if kind == "irrelevance":
        need = rng.choice(pool)
        steps: list[list[list[Any]]] = []
        used: list[str] = []
        others = [n for n in names if n not in pool]  # other domains only: nothing offered fits
    else:
        need = None
        if kind == "single":
            used = [rng.choice(pool)]
            steps = [[[used[0], _hint(rng, examples, used[0])]]]
        elif kind == "parallel":
            used = [rng.choice(pool)]
            hints: list[dict[str, Any]] = []
            for _ in range(n_calls):
                hints.append(_hint(rng, examples, used[0], hints))
            steps = [[[used[0], h] for h in hints]]
        else:  # multiple, parallel_multiple: different tools of one domain
            used = rng.sample(pool, max(1, min(len(pool), n_calls)))
            calls = [[n, _hint(rng, examples, n)] for n in used]
            steps = [[c] for c in calls] if kind == "multiple" else [calls]
        others = [n for n in names if n not in used]
    # An irrelevance instance offers as many tools as a single one (1 + distractors), all of other
    # domains: with fewer tools offered, "few tools -> answer in text" would be a cue that BFCL
    # (one tool in simple, parallel and irrelevance alike) does not have.
    k = rng.randint(*distractors) + (kind == "irrelevance")
    offered = used + rng.sample(others, min(len(others), k))
    rng.shuffle(offered)
    plan_turns = [{"steps": steps, "need": [need, _hint(rng, examples, need)] if need else None}]
    for _ in range(1, turns):  # a follow-up: one call of an offered tool with another example
        tool = rng.choice(used or offered)
        earlier = [c[1] for t in plan_turns for step in t["steps"] for c in step if c[0] == tool]
        plan_turns.append({"steps": [[[tool, _hint(rng, examples, tool, earlier)]]], "need": None})
    constraints = {"kind": kind, "turns": turns, "style": rng.choice(["brief", "detailed", "casual", "formal"])}
    return Plan(instance_id, domain, kind, offered, plan_turns, constraints)


# --------------------------------------------------------------------------- prompts

_SCENARIO_SHOT = (
    "Tools:\n- get_current_weather(city, unit?): Current weather for a city.\n"
    "- convert_currency(amount, from_currency, to_currency): Convert money.\n"
    "Write a scenario (2 sentences) where a user needs these tools.",
    "Maria is flying from Madrid to Tokyo next week and wants to know how warm it is there now. "
    "She also needs to know how many Japanese yen she will get for 300 euros.",
)


def hints_text(hints: list[tuple[str, dict[str, Any]]]) -> str:
    return "\n".join(f"- {n}: {json.dumps(a, ensure_ascii=False)}" for n, a in hints)


def scenario_messages(tools: list[ToolSchema], style: str, hints: list[tuple[str, dict[str, Any]]] | None = None
                      ) -> list[dict[str, str]]:
    """The scenario; grounded in ``hints`` (known-good calls: tool name, arguments) when given."""
    brief = "\n".join(tool_brief(t) for t in tools)
    ask = (f"Tools:\n{brief}\nWrite a scenario (2 sentences, {style} tone) where a user needs these tools. "
           "Use concrete names, places, numbers and dates.")
    if hints:
        ask += f" Build it around these details:\n{hints_text(hints)}"
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _SCENARIO_SHOT[0]},
        {"role": "assistant", "content": _SCENARIO_SHOT[1]},
        {"role": "user", "content": ask},
    ]


def memory_text(memory: list[dict[str, Any]]) -> str:
    if not memory:
        return "No calls made yet."
    lines = []
    for i, m in enumerate(memory, 1):
        result = json.dumps(m["result"], ensure_ascii=False) if "result" in m else "(result pending)"
        if len(result) > 600:
            result = result[:600] + " ..."
        lines.append(f"{i}. {m['name']}({json.dumps(m['arguments'], ensure_ascii=False)}) -> {result}")
    return "\n".join(lines)


def call_messages(scenario: str, tool: ToolSchema, memory: list[dict[str, Any]], step: int,
                  total: int, hint: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """The next call (of the planned ``tool``), with the memory of earlier calls and results.
    ``hint`` (a known-good call the scenario was built around) is shown as the example."""
    shot = (f'Example call with details from the scenario:\n{{"name": "{tool.name}", "arguments": '
            f"{json.dumps(hint, ensure_ascii=False)}}}\n\n") if hint else ""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Scenario: {scenario}\n\nFunction:\n{json.dumps(tool.openai()['function'], ensure_ascii=False)}\n\n"
            f"{shot}Calls made so far and their results:\n{memory_text(memory)}\n\n"
            f"Write call {step} of {total} as JSON {{\"name\": ..., \"arguments\": {{...}}}}. Take the values from "
            "the scenario and from earlier results; do not repeat a call already made"
            # Without an example to start from, small generators repeat the call above.
            + (": use argument values different from every call above." if memory and not hint else "."))},
    ]


SIMULATED_RESULT = {"type": "object", "minProperties": 2, "maxProperties": 6, "additionalProperties": {
    "anyOf": [{"type": "string", "maxLength": 40}, {"type": "number"}, {"type": "boolean"}]}}
"""Grammar of a simulated tool result: a flat JSON object of at most 6 short values. Nested or
unbounded output from a small generator rambles past max_tokens (``"1.1.1.1..."``); this one
ends, and its values are what an answer states."""


_SIMULATE_SHOT = (
    "Act as the API `get_weather`: Current weather for a city.\nIt was called with {\"city\": \"Oslo\"}.\n"
    "Reply with the JSON this API returns.",
    '{"temperature_c": -3, "condition": "light snow", "humidity_pct": 81, "wind_kph": 14}',
)


def simulate_messages(tool: ToolSchema, arguments: dict[str, Any]) -> list[dict[str, str]]:
    """A simulated result, for tools without an implementation: a flat object of new facts (a
    result that only echoes the arguments gives the answer nothing to state)."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _SIMULATE_SHOT[0]},
        {"role": "assistant", "content": _SIMULATE_SHOT[1]},
        {"role": "user", "content": (
            f"Act as the API `{tool.name}`: {tool.description}\nIt was called with "
            f"{json.dumps(arguments, ensure_ascii=False)}.\nReply with the JSON this API returns: one flat object, "
            "3 to 6 fields of new information with concrete values, not the arguments it was given.")},
    ]


def answer_messages(scenario: str, memory: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Scenario: {scenario}\n\nTool calls and results:\n{memory_text(memory)}\n\n"
            "Write the assistant's final answer to the user, using the results above, in at most three sentences. "
            "State the concrete values from the results (numbers, names, dates). "
            "Do not mention tools or function names.")},
    ]


def no_fit_answer_messages(need: ToolSchema, arguments: dict[str, Any]) -> list[dict[str, str]]:
    """The gold answer of a no-tool-fits turn: decline plainly, without inventing a result."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"A user asks an assistant to {need.description[:1].lower() + need.description[1:]} "
            f"(details: {json.dumps(arguments, ensure_ascii=False)}). The assistant has no tool for this and "
            "cannot look it up. Write the assistant's reply in two sentences: say plainly that it cannot do "
            "this here, and suggest where the user could find it. Do not invent any result.")},
    ]


def _values_text(calls: list[dict[str, Any]]) -> str:
    return "; ".join(", ".join(f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in c["arguments"].items())
                     for c in calls if c["arguments"]) or "(none)"


def query_messages(scenario: str, calls: list[dict[str, Any]], answer: str, previous: str | None = None
                   ) -> list[dict[str, str]]:
    """The user message the calls answer, written last (reversed order). It is shown the exact
    values it has to state; ``previous``: the assistant's earlier answer a follow-up replies to."""
    listed = "\n".join(f"- {m['name']} with {json.dumps(m['arguments'], ensure_ascii=False)}" for m in calls)
    follow = (f"This is a follow-up: the assistant had just answered \"{previous}\".\n\n" if previous else "")
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Scenario: {scenario}\n\n{follow}To help, an assistant made these calls:\n{listed}\n\n"
            f"and answered:\n{answer}\n\n"
            "Write the user's message that led to these calls: one or two sentences in the user's voice. "
            f"It must state these values exactly as written: {_values_text(calls)}. "
            "Do not mention tools, functions or APIs.")},
    ]


def rewrite_messages(seed: str, calls: list[dict[str, Any]], style: str) -> list[dict[str, str]]:
    """Rewrite a template seed query in the user's own words, keeping every value."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Rewrite this request as a user would write it ({style} tone, one or two sentences). Keep every "
            f"value exactly as written: {_values_text(calls)}. Do not add new requests.\n\nRequest: {seed}")},
    ]


_REQUEST_RE = re.compile(r"^(?:(?:hi|hello|hey|thanks|thank you|ok|okay|great)\b[\s,.!]*)*(?:can|could|would|will|"
                         r"please|what|what's|whats|which|who|where|when|how|is|are|do|does|did|should|find|"
                         r"show|get|give|tell|list|book|reserve|search|look|check|convert|compute|calculate|"
                         r"work|make|create|add|set|schedule|help|compare|plan|estimate|translate|i|i'd|i'm|"
                         r"we|we'd|my|our|let's|need|put|fit|solve|adjust|scale|factor|factorize|evaluate|analyze|analyse|"
                         r"send|remind|count|predict|suggest|recommend|summarize|summarise|explain|quote|fetch|"
                         r"pull|run|figure|break|work out|pick|read|open|see|sort|rank|pull up|look up)\b", re.I)


def is_request(query: str) -> bool:
    """Is the text a user's request (a question, or an ask in the first person or imperative),
    not a statement about the scenario? Small generators often write the latter.

    >>> is_request("Thanks! Now how warm is Oslo?"), is_request("Find flights to Rome."), is_request(
    ...     "The key facts about Osaka include the city of Osaka.")
    (True, True, False)
    """
    q = query.strip().replace("\u2019", "'")
    return "?" in q or bool(_REQUEST_RE.match(q))


_META_RE = re.compile(r"\b(?:rewrite|rewritten|the user(?:'s)?|the assistant(?:'s)?|possible response|final answer|"
                      r"scenario|user's message|this request|the request|in two sentences|tool calls?|json)\b|<<|"
                      r"\bhere(?:'s| is) (?:a|an|the) (?:possible |sample |example )?(?:response|reply|answer|message)",
                      re.I)


def talks_about_the_task(text: str) -> bool:
    """Does a generated query or answer talk about the writing task instead of doing it ("Rewrite
    this request: ...", "The user's goal was ...", "Here's a possible response")? Small
    generators do; such a text is retried.

    >>> talks_about_the_task("Here's a possible response: I can't do that."), talks_about_the_task(
    ...     "The user wants the weather."), talks_about_the_task("It is 18 degrees in Oslo.")
    (True, True, False)
    """
    return bool(_META_RE.search(text.replace("\u2019", "'")))


_STOP = frozenset("""about above after again also and any are at be been before being below between both but by can
could did does doing down during each few for from further had has have having here how into its itself just
like more most much near next not now of off once only other our out over own same should some such than that
their them then there these they this those through too under until very was were what when where which while
who whom why will with would you your yours please tell show give find want need know right there""".split())


def _words(text: str) -> set[str]:
    return {w[:-1] if w.endswith("s") and len(w) > 4 else w for w in re.findall(r"[a-z]{4,}", text.casefold())
            if w not in _STOP}


def on_topic(query: str, seeds: list[str], calls: list[dict[str, Any]]) -> bool:
    """Does the query ask for what each call does? Per call, at least two content words of its
    seed request (one when the seed has only one), not counting the call's values, are in the
    query. Catches a query that states the values but asks for something else ("I'm ready to
    help you with your hotel in Lisbon" for a forecast in Lisbon).

    >>> seeds = ["What will the weather be like in Lisbon over the next 3 days?"]
    >>> calls = [{"name": "get_weather_forecast", "arguments": {"city": "Lisbon", "days": 3}}]
    >>> on_topic("Lisbon forecast please: what's the weather for 3 days?", seeds, calls)
    True
    >>> on_topic("I'm ready to help you with your 3-day hotel stay in Lisbon.", seeds, calls)
    False
    """
    have = _words(query)
    for seed, call in zip(seeds, calls):
        values = _words(json.dumps(call.get("arguments") or {}, ensure_ascii=False))
        anchors = _words(seed) - values
        if anchors and len(anchors & have) < min(2, len(anchors)):
            return False
    return True


_DECLINE_RE = re.compile(r"\b(?:can(?:'|no)t|can not|cannot|unable|not able|don't have|do not have|no access|"
                         r"not possible|isn't something|is not something)\b", re.I)


def declines(answer: str) -> bool:
    """Does a no-tool-fits answer decline (rather than invent a result)?

    >>> declines("Sorry, I can't check live flight prices here."), declines("Flights cost $300.")
    (True, False)
    """
    return bool(_DECLINE_RE.search(answer.replace("\u2019", "'")))


# --------------------------------------------------------------------------- grammar


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Parameters schema for constrained decoding: JSON Schema type names, no invented keys at
    any level."""
    return _closed(json_schema_types(schema))


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    if out.get("type") == "object" and isinstance(out.get("properties"), dict):
        out["properties"] = {k: _closed(v) for k, v in out["properties"].items()}
        out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = _closed(out["items"])
    if out.get("type") is None:
        out.pop("type", None)
    return out


def call_grammar(tools: list[ToolSchema]) -> dict[str, Any]:
    """JSON schema of one call to any of ``tools``: even a small generator emits valid calls."""
    options = [{"type": "object", "properties": {
        "name": {"type": "string", "enum": [t.name]},
        "arguments": _strict({"type": "object", "properties": t.properties, "required": list(t.required)})},
        "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


# --------------------------------------------------------------------------- filters

FILTERS = ("invalid_call", "tool_error", "empty_answer", "truncated_answer", "answer_ungrounded", "talks_about_task",
           "empty_query",
           "truncated_query", "query_not_request", "query_off_topic", "query_names_tool", "query_leaks_arguments", "query_ungrounded", "duplicate")


def names_tool(query: str, tool_names: list[str]) -> bool:
    q = query.lower()
    return any(n.lower() in q or n.lower().replace("_", " ") in q for n in tool_names)


def leaks_arguments(query: str, memory: list[dict[str, Any]], min_len: int = 4) -> bool:
    """True when the query repeats an argument value verbatim: a string of at least
    ``min_len`` characters (case-insensitive), or a structured value's JSON."""
    q = query.lower()
    for m in memory:
        for v in m["arguments"].values():
            if isinstance(v, str) and len(v) >= min_len and v.lower() in q:
                return True
            if isinstance(v, (dict, list)) and json.dumps(v, ensure_ascii=False).lower() in q:
                return True
    return False


_PREFIX_RE = re.compile(r"^\s*(?:(?:the\s+)?user(?:'s)?\s*(?:message|request|query)?\s*:|query\s*:|message\s*:)\s*",
                        re.I)


def clean_text(text: str) -> str:
    """Drop a leading 'User's message:'-style label and wrapping quotes (small generators add them)."""
    t = _PREFIX_RE.sub("", text.strip()).strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        t = t[1:-1].strip()
    return t


def normalize_query(q: str) -> str:
    return re.sub(r"\W+", " ", q.lower()).strip()


# --------------------------------------------------------------------------- instance


def build_messages(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages of a finished instance: per turn the user query, then per step one
    assistant message with its calls (several: parallel) and a tool message per call, then the
    final answer. A turn without steps (no tool fits) is the query and a text answer."""
    msgs: list[dict[str, Any]] = []
    for turn in turns:
        msgs.append({"role": "user", "content": turn["query"]})
        n = 0
        for step in turn["steps"]:
            ids = [f"call_{turn['index']}_{n + i}" for i in range(len(step))]
            n += len(step)
            msgs.append({"role": "assistant", "content": "", "tool_calls": [
                {"id": i, "type": "function", "function": {"name": m["name"], "arguments": m["arguments"]}}
                for i, m in zip(ids, step)]})
            msgs.extend({"role": "tool", "tool_call_id": i, "name": m["name"],
                         "content": json.dumps(m["result"], ensure_ascii=False)} for i, m in zip(ids, step))
        msgs.append({"role": "assistant", "content": turn["answer"]})
    return msgs
