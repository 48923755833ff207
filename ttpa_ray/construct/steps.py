"""Reversed construction, the pure parts: prompts, the call grammar, filters, the instance.

No Ray, no engine: every function takes plain data and is tested without a cluster. The
stage in :mod:`ttpa_ray.construct.stage` drives these steps over a generator engine.

The reversed order (TTPA): scenario -> tool calls one at a time with a memory of calls and
results -> final answer -> only then the user query that the answer answers. So every kept
query is answerable by construction.

Grounding (our addition for executable catalogs): each plan draws one known-good example
call per tool from the catalog (``hints``); the scenario is built around those details and
the call prompt shows them. A strong generator varies them; a 135M generator mostly copies
them, which is what makes its calls execute against the bundled data.
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
    """What the sampler fixes before any generation: the tool subset and the constraints."""

    instance_id: int
    domain: str
    tools: list[str]
    num_calls: list[int]
    """Calls per turn."""
    constraints: dict[str, Any] = field(default_factory=dict)


def sample_plan(instance_id: int, domains: dict[str, list[str]], seed: int, tools_range: tuple[int, int],
                calls_range: tuple[int, int], turns: int) -> Plan:
    """Deterministic per (seed, instance id): a domain, 1..k of its tools, calls per turn."""
    rng = random.Random(f"{seed}:{instance_id}")
    domain = rng.choice(sorted(domains))
    pool = domains[domain]
    k = max(1, min(len(pool), rng.randint(*tools_range)))
    tools = sorted(rng.sample(pool, k))
    calls = [rng.randint(*calls_range) for _ in range(turns)]
    constraints = {"num_calls_per_turn": calls, "turns": turns,
                   "style": rng.choice(["brief", "detailed", "casual", "formal"])}
    return Plan(instance_id, domain, tools, calls, constraints)


# --------------------------------------------------------------------------- prompts

_SCENARIO_SHOT = (
    "Tools:\n- get_current_weather(city, unit?): Current weather for a city.\n"
    "- convert_currency(amount, from_currency, to_currency): Convert money.\n"
    "Write a scenario (2 sentences) where a user needs these tools.",
    "Maria is flying from Madrid to Tokyo next week and wants to know how warm it is there now. "
    "She also needs to know how many Japanese yen she will get for 300 euros.",
)


def hints_text(hints: dict[str, dict[str, Any]]) -> str:
    return "\n".join(f"- {n}: {json.dumps(a, ensure_ascii=False)}" for n, a in hints.items())


def scenario_messages(tools: list[ToolSchema], style: str, hints: dict[str, dict[str, Any]] | None = None
                      ) -> list[dict[str, str]]:
    """The scenario; grounded in ``hints`` (known-good argument values per tool) when given."""
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
        result = json.dumps(m["result"], ensure_ascii=False)
        if len(result) > 600:
            result = result[:600] + " ..."
        lines.append(f"{i}. {m['name']}({json.dumps(m['arguments'], ensure_ascii=False)}) -> {result}")
    return "\n".join(lines)


def call_messages(scenario: str, tools: list[ToolSchema], memory: list[dict[str, Any]], step: int,
                  total: int, hints: dict[str, dict[str, Any]] | None = None) -> list[dict[str, str]]:
    """The next call, with the memory of earlier calls and results. ``hints`` (the details the
    scenario was built around) are shown as example calls."""
    schemas = "\n".join(json.dumps(t.openai()["function"], ensure_ascii=False) for t in tools)
    shots = ""
    if hints:
        shots = "Example calls with details from the scenario:\n" + "\n".join(
            f'{{"name": "{n}", "arguments": {json.dumps(a, ensure_ascii=False)}}}' for n, a in hints.items()) + "\n\n"
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Scenario: {scenario}\n\nAvailable functions:\n{schemas}\n\n{shots}"
            f"Calls made so far and their results:\n{memory_text(memory)}\n\n"
            f"Write call {step} of {total} as JSON {{\"name\": ..., \"arguments\": {{...}}}}. Take the values from "
            "the scenario and from earlier results; do not repeat a call already made.")},
    ]


def simulate_messages(tool: ToolSchema, arguments: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Act as the API `{tool.name}`: {tool.description}\nIt was called with "
            f"{json.dumps(arguments, ensure_ascii=False)}.\nReply with a realistic JSON response of this API.")},
    ]


def answer_messages(scenario: str, memory: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Scenario: {scenario}\n\nTool calls and results:\n{memory_text(memory)}\n\n"
            "Write the assistant's final answer to the user, using the results above, in at most three sentences. "
            "Be specific. Do not mention tools or function names.")},
    ]


def query_messages(scenario: str, memory: list[dict[str, Any]], answer: str) -> list[dict[str, str]]:
    calls = "\n".join(f"- {m['name']} with {json.dumps(m['arguments'], ensure_ascii=False)}" for m in memory)
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Scenario: {scenario}\n\nTo help, an assistant made these calls:\n{calls}\n\nand answered:\n{answer}\n\n"
            "Write the user's message that led to this answer: one or two sentences in the user's voice, "
            "containing every detail needed for those calls. Do not mention tools, functions or APIs.")},
    ]


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

FILTERS = ("invalid_call", "tool_error", "empty_answer", "truncated_answer", "empty_query", "truncated_query",
           "query_names_tool", "query_leaks_arguments", "query_ungrounded", "duplicate")


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
    """OpenAI chat messages of a finished instance: per turn the user query, one assistant
    message per call with its tool result, then the final answer."""
    msgs: list[dict[str, Any]] = []
    for turn in turns:
        msgs.append({"role": "user", "content": turn["query"]})
        for i, m in enumerate(turn["memory"]):
            call_id = f"call_{turn['index']}_{i}"
            msgs.append({"role": "assistant", "content": "", "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": m["name"], "arguments": m["arguments"]}}]})
            msgs.append({"role": "tool", "tool_call_id": call_id, "name": m["name"],
                         "content": json.dumps(m["result"], ensure_ascii=False)})
        msgs.append({"role": "assistant", "content": turn["answer"]})
    return msgs
