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

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def executable(self) -> bool:
        return self.impl is not None

    def openai(self) -> dict[str, Any]:
        return self.schema.openai()
