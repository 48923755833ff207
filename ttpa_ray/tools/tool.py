"""A tool of a catalog: its schema, where it comes from, and how it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ttpa_ray.toolcall import ToolSchema


@dataclass(frozen=True)
class Tool:
    schema: ToolSchema
    domain: str = "general"
    impl: str | None = None
    """``"module:function"`` of a deterministic implementation, or None (simulated)."""
    examples: tuple[dict[str, Any], ...] = field(default=())
    """Argument dicts known to execute successfully (few-shot examples and tests)."""
    query_template: str | None = None
    """A short user request for one call, in the user's voice: ``{param}`` is replaced by the
    argument's value and a ``[...]`` segment is kept only when the call has every argument it
    names (:func:`ttpa_ray.construct.templates.fill`). None: a generic request is built from the
    description (:func:`ttpa_ray.construct.templates.generic_query`)."""

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def executable(self) -> bool:
        return self.impl is not None

    def openai(self) -> dict[str, Any]:
        return self.schema.openai()
