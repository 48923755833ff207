"""Does the conversation determine its calls? A pure check of a constructed instance.

A gold call is *grounded* when every argument value it passes can be read from the
conversation before it: the user's messages so far, or the result of an earlier tool call (an
id from a search, say). The rules, per leaf value of the arguments (lists and objects are
walked):

- **strings**: the value, case-folded with whitespace collapsed, appears in the context
  normalised the same way. A date written ``YYYY-MM-DD`` also matches its written-out forms
  (``March 5, 2026``, ``5 March 2026``, ``Mar 5``, ``5 Mar 2026``).
- **numbers** (not booleans): some number in the context has the same value, whatever its
  format (``1,200`` = ``1200`` = ``1200.0``); so do the words ``zero`` ... ``twenty``.
- **enum and boolean parameters**, and lists of them (per the tool's schema): accepted without a textual match.
  A user says "in fahrenheit" for ``units: "imperial"`` or "only direct flights" for
  ``direct: true``; whether the choice is right is ESM's job (``value_error``), not this
  filter's.
- **a value equal to the parameter's schema default** is accepted: it needs no mention.

:func:`ungrounded` lists what fails; an empty list means every call is determined.

>>> tools = [{"name": "get_weather", "parameters": {"type": "object", "properties": {
...     "city": {"type": "string"}, "units": {"type": "string", "enum": ["metric", "imperial"]},
...     "days": {"type": "integer"}}}}]
>>> def conv(query, args):
...     return [{"role": "user", "content": query},
...             {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
...              "arguments": args}}]}]
>>> ungrounded(conv("Weather in  TOKYO for the next 3 days, in fahrenheit?",
...                 {"city": "Tokyo", "units": "imperial", "days": 3}), tools)
[]
>>> ungrounded(conv("Mike wants to know how many bats he can hold", {"city": "Tokyo", "days": 3}), tools)
["get_weather.city='Tokyo'", 'get_weather.days=3']

An *answer* is grounded (:func:`answer_grounded`) when it states at least one value of each of
the turn's tool results (a result with no value that counts is skipped; an answer to several
calls has to use them all). The turn is its memory: ``{"name", "arguments", "result"}`` per call. The values
that count (:func:`result_facts`) are the scalar leaves of the results, except booleans, None,
strings shorter than 3 characters, and any value equal to an argument value of the turn's calls
(a result that echoes the query shows nothing was read). A string counts when it appears in the
answer by the string rule above (dates in their written forms too), a number by value.

>>> memory = [{"name": "get_weather", "arguments": {"city": "Tokyo"},
...            "result": {"city": "Tokyo", "temperature": 18.0, "condition": "partly cloudy", "rain": False}}]
>>> answer_grounded("It is 18 degrees in Tokyo.", memory), answer_grounded("Partly cloudy today!", memory)
(True, True)
>>> answer_grounded("Tokyo is lovely; enjoy your trip!", memory)   # only the city, which the user gave
False
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d+(?:\.\d+)?")
_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen twenty").split()


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.casefold()).strip()


def _numbers(text: str) -> set[float]:
    found = {float(m.group(0).replace(",", "")) for m in _NUMBER_RE.finditer(text)}
    words = set(re.findall(r"[a-z]+", text.casefold()))
    return found | {float(i) for i, w in enumerate(_WORDS) if w in words}


def _date_forms(value: str) -> list[str]:
    """Written-out forms of an ISO date (``2026-03-05``); [] for anything else."""
    try:
        d = dt.date.fromisoformat(value)
    except ValueError:
        return []
    month, mon = d.strftime("%B").casefold(), d.strftime("%b").casefold()
    return [f"{m} {d.day}" for m in (month, mon)] + [f"{d.day} {m}" for m in (month, mon)] + [
        f"{d.day}{suffix} {m}" for suffix in ("st", "nd", "rd", "th") for m in (month, mon)] + [
        f"{m} {d.day}{suffix}" for suffix in ("st", "nd", "rd", "th") for m in (month, mon)]


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def _found(value: Any, context: str, numbers: set[float]) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):  # only reached without a schema saying boolean
        return True
    if isinstance(value, (int, float)):
        return float(value) in numbers
    text = _norm(str(value))
    if not text or text in context:
        return True
    return any(form in context for form in _date_forms(str(value)))


def _schemas(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for t in tools:
        fn = t.get("function", t)
        out[fn.get("name", "")] = (fn.get("parameters") or {}).get("properties") or {}
    return out


def free_choice(spec: dict[str, Any], value: Any) -> bool:
    """Enum and boolean parameters (and lists of them), and a value equal to the default, need
    no mention (``spec`` is the parameter's JSON Schema).

    >>> free_choice({"type": "string", "enum": ["km", "mi"]}, "mi"), free_choice({"type": "integer"}, 3)
    (True, False)
    """
    t = spec.get("type")
    items = spec.get("items") if isinstance(spec.get("items"), dict) else {}
    return ("enum" in spec or t in ("boolean", "bool") or (isinstance(t, list) and "boolean" in t)
            or ("default" in spec and spec["default"] == value)
            or (bool(items) and ("enum" in items or items.get("type") == "boolean")))  # a list of choices


def ungrounded(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[str]:
    """``name.path=value`` of every gold argument value the conversation before its call does
    not determine (the rules are in the module docstring)."""
    props = _schemas(tools)
    context, missing = "", []
    for m in messages:
        if m.get("role") in ("user", "tool"):
            content = m.get("content")
            context += " " + _norm(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
            continue
        numbers = _numbers(context)
        for c in m.get("tool_calls") or []:
            fn = c.get("function", c)
            args = fn.get("arguments") or {}
            if isinstance(args, str):
                args = json.loads(args)
            for key, value in args.items():
                spec = props.get(fn.get("name", ""), {}).get(key, {})
                if free_choice(spec, value):
                    continue
                missing += [f"{fn.get('name')}{path}={leaf!r}" for path, leaf in _leaves(value, f".{key}")
                            if not _found(leaf, context, numbers)]
    return missing


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return isinstance(a, str) and isinstance(b, str) and _norm(a) == _norm(b)


def result_facts(memory: list[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    """``(call index, path, value)`` of every result leaf an answer can state to show it used the
    results: not a boolean or None, not a string under 3 characters, not equal to an argument
    value of the turn's calls. Paths look like ``.forecast[0].high_c``.

    >>> result_facts([{"name": "f", "arguments": {"city": "Oslo"}, "result": {"city": "Oslo", "ok": True,
    ...                "temps": [3, 4.5], "sky": "fog", "wind": "N"}}])
    [(0, '.temps[0]', 3), (0, '.temps[1]', 4.5), (0, '.sky', 'fog')]
    """
    echoes = [leaf for m in memory for _, leaf in _leaves(m.get("arguments") or {}, "")]
    facts = []
    for i, m in enumerate(memory):
        for path, leaf in _leaves(m.get("result"), ""):
            if leaf is None or isinstance(leaf, bool) or (isinstance(leaf, str) and len(_norm(leaf)) < 3):
                continue
            if not isinstance(leaf, (str, int, float)) or any(_same(leaf, e) for e in echoes):
                continue
            facts.append((i, path, leaf))
    return facts


def answer_grounded(answer: str, memory: list[dict[str, Any]]) -> bool:
    """Does the answer state at least one value of each of the turn's tool results that has one
    (rules in the module docstring)? ``memory`` holds ``{"name", "arguments", "result"}`` per call of the turn."""
    context = _norm(answer)
    numbers = _numbers(answer)
    facts: dict[int, bool] = {}
    for call, _, value in result_facts(memory):
        stated = float(value) in numbers if isinstance(value, (int, float)) else _found(value, context, numbers)
        facts[call] = facts.get(call, False) or stated
    return bool(facts) and all(facts.values())
