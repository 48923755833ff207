"""Query templates and fallback answers: text that is grounded by construction.

A 135M generator rarely writes a user query that states every argument value of the gold calls,
so each bundled tool carries a *query template* (``Tool.query_template``): a short request in the
user's voice that the generator rewrites, and that is used as is as the last resort. The answer
has the same last resort, :func:`fallback_answer`, which states values of the tool results.
Everything here is pure: plain data in, text out; the checks these texts must pass are in
:mod:`ttpa_ray.construct.grounding`.

Template syntax:

- ``{param}`` is replaced by the call's value of ``param``; ``{param.key}`` by one key of an
  object argument (``{guest.email}``).
- ``[...]`` is an optional segment, kept only when the call has every placeholder inside it
  (segments do not nest). Text outside segments is always kept, so a placeholder there must be a
  required parameter.
- Values read naturally: strings as they are, numbers without a trailing ``.0``, lists as
  ``a, b and c``, booleans ``yes``/``no``, objects as ``key value, key value`` (lists of objects
  joined by ``;``). So a boolean is written as a phrase keyed on it: ``[ (hourly: {include_hourly})]``.
- An argument the template does not place is appended before the final punctuation,
  ``(with departure window earliest 15:00)``, unless it needs no mention: an enum or boolean
  choice, or the schema default (:func:`~ttpa_ray.construct.grounding.free_choice`).

>>> t = "What will the weather be like in {city}[ over the next {days} days][ in {units} units]?"
>>> fill(t, {"city": "Paris", "days": 5.0})
'What will the weather be like in Paris over the next 5 days?'
>>> fill(t, {"city": "Oslo", "start_date": "2026-03-05"})
'What will the weather be like in Oslo (with start date 2026-03-05)?'
"""

from __future__ import annotations

import re
from typing import Any

from ttpa_ray.construct.grounding import free_choice, result_facts
from ttpa_ray.toolcall import ToolSchema

_SEGMENT_RE = re.compile(r"\[([^\[\]]*)\]")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)\}")
_JOINERS = ("Also, ", "Then, ", "And ")
_MAX_FACTS = 6
_MAX_ANSWER_CHARS = 400
_MAX_FACT_CHARS = 80


def _words(key: str) -> str:
    return key.replace("_", " ").strip()


def _and(items: list[str]) -> str:
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _text(value: Any) -> str:
    """A value as a person writes it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        text = repr(value)
        return text if "e" not in text else f"{value:.12f}".rstrip("0").rstrip(".")
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{_words(str(k))} {_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        if any(isinstance(v, dict) for v in value):
            return "; ".join(_text(v) for v in value)
        return _and([_text(v) for v in value])
    return str(value)


def _lower_first(text: str) -> str:
    """Lowercase the first letter for a continuation, unless it is "I" or starts an acronym."""
    if not text or re.match(r"I\b|[A-Z]{2}", text):
        return text
    return text[0].lower() + text[1:]


def placeholders(template: str) -> set[str]:
    """The top-level parameters a template names.

    >>> sorted(placeholders("Book {hotel_id} for {guest.full_name}[ ({guests} guests)]"))
    ['guest', 'guests', 'hotel_id']
    """
    return {p.split(".")[0] for p in _PLACEHOLDER_RE.findall(template)}


def _lookup(arguments: dict[str, Any], name: str) -> tuple[bool, Any]:
    head, _, key = name.partition(".")
    if head not in arguments:
        return False, None
    if not key:
        return True, arguments[head]
    value = arguments[head]
    return (True, value[key]) if isinstance(value, dict) and key in value else (False, None)


def _check_names(template: str, properties: dict[str, Any]) -> None:
    for name in _PLACEHOLDER_RE.findall(template):
        head, _, key = name.partition(".")
        sub = (properties.get(head) or {}).get("properties") or {}
        if head not in properties or (key and key not in sub):
            raise ValueError(f"template {template!r} names {{{name}}}, which is not a parameter of the tool "
                             f"(parameters: {sorted(properties)}); fix the placeholder's spelling")


def _unplaced(arguments: dict[str, Any], placed: set[str], properties: dict[str, Any] | None) -> list[str]:
    """``words value`` of each argument the template left out that needs a mention."""

    def needed(spec: dict[str, Any] | None, value: Any) -> bool:
        return not (isinstance(value, bool) or (spec is not None and free_choice(spec, value)))

    extra = []
    for key, value in arguments.items():
        if key in placed:
            continue
        spec = None if properties is None else properties.get(key, {})
        subs = {p.partition(".")[2] for p in placed if p.startswith(key + ".")}
        if subs and isinstance(value, dict):  # an object placed key by key: mention the keys left out
            inner = (spec or {}).get("properties") or {}
            extra += [f"{_words(key)} {_words(k)} {_text(v)}" for k, v in value.items()
                      if k not in subs and needed(None if spec is None else inner.get(k, {}), v)]
        elif needed(spec, value):
            extra.append(f"{_words(key)} {_text(value)}")
    return extra


def fill(template: str, arguments: dict[str, Any], properties: dict[str, Any] | None = None) -> str:
    """Render a query template for one call (syntax in the module docstring). ``properties`` (the
    tool's parameter schemas) lets enum, boolean and default values go unmentioned and catches a
    misspelt placeholder; without it, every left-out argument but a boolean is appended.

    >>> t = "Find flights from {origin} to {destination}[ leaving between {w.earliest} and {w.latest}]."
    >>> fill(t, {"origin": "Oslo", "destination": "Rome", "w": {"earliest": "09:00", "latest": "12:00"}})
    'Find flights from Oslo to Rome leaving between 09:00 and 12:00.'
    >>> fill(t, {"origin": "Oslo", "destination": "Rome", "w": {"earliest": "09:00"}, "cities": ["A", "B", "C"]})
    'Find flights from Oslo to Rome (with w earliest 09:00, cities A, B and C).'
    """
    if properties is not None:
        _check_names(template, properties)
    resolved = _SEGMENT_RE.sub(
        lambda m: m.group(1) if all(_lookup(arguments, p)[0] for p in _PLACEHOLDER_RE.findall(m.group(1))) else "",
        template)
    resolved = re.sub(r"\s+", " ", resolved).strip()
    resolved = re.sub(r"\s+([?.!,;:)])", r"\1", resolved)
    body = resolved.rstrip(".?!")
    tail = resolved[len(body):]  # extras go before the final punctuation
    placed: set[str] = set()

    def value(m: re.Match[str]) -> str:
        found, v = _lookup(arguments, m.group(1))
        if not found:
            raise ValueError(f"template {template!r} needs {{{m.group(1)}}} but the call has no such argument; "
                             f"put it inside [...] if the parameter is optional")
        placed.add(m.group(1))
        return _text(v)

    text = _PLACEHOLDER_RE.sub(value, body)
    extra = _unplaced(arguments, placed, properties)
    return text + (f" (with {', '.join(extra)})" if extra else "") + tail


def _task(description: str) -> str:
    """The first sentence (or clause) of a tool description, ready to follow "help me:"."""
    first = re.split(r"(?<=[.;])\s", re.sub(r"\s+", " ", description).strip())[0]
    first = re.split(r"\s*(?:[:;(]| - )", first)[0]  # "Get facts about a city: country, ..." -> the clause
    return _lower_first(first.rstrip(" .;:,"))


def generic_query(schema: ToolSchema, arguments: dict[str, Any]) -> str:
    """A request for a tool that has no template (user catalogs), built from its description;
    it states every argument value.

    >>> s = ToolSchema("reserve_table", "Reserve a table at a restaurant. Returns a code.",
    ...                {"restaurant": {"type": "string"}, "party_size": {"type": "integer"}}, ("restaurant",), {})
    >>> generic_query(s, {"restaurant": "Chez Lou", "party_size": 4})
    'Can you help me: reserve a table at a restaurant? Use restaurant Chez Lou and party size 4.'
    """
    task = _task(schema.description)
    ask = f"Can you help me: {task}?" if task else "Can you help me with a request?"
    if not arguments:
        return ask
    parts = [f"{_words(k)} {_text(v)}" for k, v in arguments.items()]
    joined = "; ".join(parts) if any("," in p for p in parts) else _and(parts)
    return f"{ask} Use {joined}."


def seed_query(calls: list[tuple[ToolSchema, str | None, dict[str, Any]]]) -> str:
    """One user message asking for the calls of a turn, in order: each call's template (or
    :func:`generic_query` where it has none, or where the call lacks an argument the template
    needs), later ones as "Also, ..." / "Then, ...".

    >>> s = ToolSchema("f", "Convert money.", {"amount": {"type": "number"}}, ("amount",), {})
    >>> seed_query([(s, "How much is {amount} euros in yen?", {"amount": 300}),
    ...             (s, "What is {amount} dollars in pounds?", {"amount": 12.5})])
    'How much is 300 euros in yen? Also, what is 12.5 dollars in pounds?'
    """
    if not calls:
        raise ValueError("seed_query needs at least one call (tool schema, template or None, arguments)")
    parts = []
    for i, (schema, template, arguments) in enumerate(calls):
        try:
            text = fill(template, arguments, schema.properties) if template else generic_query(schema, arguments)
        except ValueError:  # a call without a required placeholder's argument (the generator left it out)
            text = generic_query(schema, arguments)
        parts.append(text if i == 0 else _JOINERS[(i - 1) % len(_JOINERS)] + _lower_first(text))
    return " ".join(parts)


def _label(path: str) -> str:
    keys = re.findall(r"\.([^.\[\]]+)", path)
    return _words(keys[-1]) if keys else ""


def fallback_answer(memory: list[dict[str, Any]]) -> str:
    """A plain answer stating values of the turn's results (``{"name", "arguments", "result"}``
    per call): up to six per result, not echoes of the arguments, about 400 characters at most.
    Where the results hold nothing beyond the arguments it says so (and is not grounded).

    >>> fallback_answer([{"name": "get_weather", "arguments": {"city": "Lisbon"}, "result": {
    ...     "city": "Lisbon", "temperature": 18.0, "condition": "partly cloudy", "humidity_pct": 70}}])
    'Here is what I found: temperature 18, condition partly cloudy, humidity pct 70.'
    """
    per_call: dict[int, list[str]] = {}
    shortest: dict[int, str] = {}
    for i, path, value in result_facts(memory):
        text = _text(value)
        fact = f"{_label(path)} {text}".strip()
        if i not in shortest or len(fact) < len(shortest[i]):
            shortest[i] = fact
        if len(per_call.setdefault(i, [])) < _MAX_FACTS and len(text) <= _MAX_FACT_CHARS:
            per_call[i].append(fact)
    for i, fact in shortest.items():  # every call states something, even when all its values are long
        per_call[i] = per_call[i] or [fact]
    groups, used = [], len("Here is what I found: .")
    for facts in per_call.values():
        kept = []
        for fact in facts:
            if kept:  # the first fact of each call always goes in: the answer must use every result
                if used + len(fact) + 2 > _MAX_ANSWER_CHARS:
                    break
            kept.append(fact)
            used += len(fact) + 2
        if kept:
            groups.append(", ".join(kept))
    if not groups:
        return "I checked, but the results only repeat the details you gave me."
    return f"Here is what I found: {'; '.join(groups)}."


def no_tool_answer(request_description: str) -> str:
    """The answer to a request that none of the offered tools can do: a polite decline. The
    description goes in parentheses, so a noun phrase ("Opening hours of a clinic") reads as
    well as a command ("Book a table").

    >>> no_tool_answer("Book a table at a restaurant.")
    "I'm sorry, I can't do that here: none of the tools I have covers it (book a table at a restaurant). \
If you can do that elsewhere, I'm happy to help with anything else."
    """
    task = _task(request_description)
    covers = f" ({task})" if task else ""
    return (f"I'm sorry, I can't do that here: none of the tools I have covers it{covers}. If you can do that "
            "elsewhere, I'm happy to help with anything else.")
