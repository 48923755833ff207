"""The bundled catalog of executable tools: :data:`CATALOG`, built at import.

Tools span weather, travel, finance, calendar, units, math, search and recipes. Their schemas
and examples live next to their implementations (``SPECS`` at the end of each module of
:mod:`ttpa_ray.tools.impl`); this module validates them with :func:`ttpa_ray.toolcall.load_tool`
and wraps them as :class:`~ttpa_ray.tools.tool.Tool`. Implementations are deterministic, read only
bundled data (``ttpa_ray/tools/data``), and raise ``ValueError`` on bad arguments.

    from ttpa_ray.tools.bundled import CATALOG, call_tool
    tool = next(t for t in CATALOG if t.name == "convert_currency")
    call_tool(tool, {"amount": 300, "from_currency": "EUR", "to_currency": "JPY"})
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from ttpa_ray.toolcall import SchemaError, load_tool
from ttpa_ray.tools.tool import Tool

DOMAIN_MODULES = ("weather", "travel", "transport", "finance", "calendar", "units", "mathstats", "search", "recipes")


def resolve_impl(impl: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (ValueError if it cannot be found)."""
    module, sep, name = impl.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"impl {impl!r} must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"impl {impl!r} cannot be imported: {exc}") from None
    if not callable(fn):
        raise ValueError(f"impl {impl!r} is not callable")
    return fn  # type: ignore[no-any-return]


def call_tool(tool: Tool, arguments: dict[str, Any]) -> Any:
    """Run an executable tool in-process with keyword arguments (no sandbox, no timeout).
    Missing or unknown arguments raise ValueError, like every other bad input."""
    if tool.impl is None:
        raise ValueError(f"tool {tool.name!r} has no implementation")
    if not isinstance(arguments, dict):
        raise ValueError(f"arguments of {tool.name!r} must be an object, got {type(arguments).__name__}")
    fn = resolve_impl(tool.impl)
    try:
        inspect.signature(fn).bind(**arguments)
    except TypeError as exc:
        raise ValueError(f"bad arguments for {tool.name}: {exc}") from None
    return fn(**arguments)


def _build() -> list[Tool]:
    tools: list[Tool] = []
    for mod in DOMAIN_MODULES:
        for spec in importlib.import_module(f"ttpa_ray.tools.impl.{mod}").SPECS:
            schema = load_tool(spec["schema"], len(tools))
            resolve_impl(spec["impl"])
            tools.append(Tool(schema=schema, domain=spec["domain"], impl=spec["impl"],
                              examples=tuple(dict(e) for e in spec["examples"]),
                              query_template=spec.get("query")))
    names = [t.name for t in tools]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SchemaError(f"bundled catalog has duplicate tool names: {dupes}")
    return tools


CATALOG: list[Tool] = _build()
"""Every bundled tool, in domain order."""

DOMAINS: tuple[str, ...] = tuple(dict.fromkeys(t.domain for t in CATALOG))
