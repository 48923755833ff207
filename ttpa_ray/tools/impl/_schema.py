"""Small builders for the JSON Schemas of the bundled tools.

Each domain module ends with ``SPECS``: one :func:`spec` per tool, so a tool's schema sits
next to its implementation. ``ttpa_ray.tools.bundled`` turns the specs into ``Tool`` objects.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _with(base: Schema, default: Any, extra: dict[str, Any]) -> Schema:
    if default is not None:
        base["default"] = default
    base.update(extra)
    return base


def string(description: str, default: str | None = None, **extra: Any) -> Schema:
    return _with({"type": "string", "description": description}, default, extra)


def integer(description: str, default: int | None = None, **extra: Any) -> Schema:
    return _with({"type": "integer", "description": description}, default, extra)


def number(description: str, default: float | None = None, **extra: Any) -> Schema:
    return _with({"type": "number", "description": description}, default, extra)


def boolean(description: str, default: bool | None = None) -> Schema:
    return _with({"type": "boolean", "description": description}, default, {})


def enum(values: list[Any], description: str, default: Any = None) -> Schema:
    kind = "integer" if all(isinstance(v, int) for v in values) else "string"
    return _with({"type": kind, "enum": list(values), "description": description}, default, {})


def array(items: Schema, description: str, **extra: Any) -> Schema:
    return {"type": "array", "items": items, "description": description, **extra}


def obj(properties: dict[str, Schema], description: str, required: list[str] | None = None) -> Schema:
    return {"type": "object", "description": description, "properties": properties,
            "required": list(required or [])}


def spec(domain: str, func: str, description: str, properties: dict[str, Schema], required: list[str],
         examples: list[dict[str, Any]], name: str | None = None, query: str | None = None) -> dict[str, Any]:
    """One catalog entry. ``func`` is ``"module:function"`` relative to ``ttpa_ray.tools.impl``;
    the tool name defaults to the function name. ``query`` is the tool's query template (syntax
    in :mod:`ttpa_ray.construct.templates`): a user request that determines a call's arguments."""
    module, _, function = func.partition(":")
    return {
        "domain": domain,
        "impl": f"ttpa_ray.tools.impl.{module}:{function}",
        "examples": examples,
        "query": query,
        "schema": {"type": "function", "function": {
            "name": name or function, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}},
    }
