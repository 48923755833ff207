"""Tool catalogs: the bundled executable catalog and user catalogs.

A :class:`Tool` is an OpenAI function schema plus, when it can run for real, the import
path of a deterministic Python implementation (``"package.module:function"``, called with
the call's arguments as keyword arguments, returning JSON-serialisable data). Tools without
an implementation get results simulated by the generator model (marked in the data).

    tools = bundled_catalog()                       # executable, bundled data, no network
    tools = load_catalog("my_tools.jsonl")          # OpenAI-schema JSON / JSONL
    tools = load_catalog("toolbench/tools/")        # ToolBench-style folder of JSON files
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ttpa_ray.toolcall import SchemaError, load_tool
from ttpa_ray.tools.bundled import CATALOG
from ttpa_ray.tools.tool import Tool


def resolve_catalog(source: str) -> list[Tool]:
    """The tools a job's ``catalog`` names: ``"bundled"`` or a path for :func:`load_catalog`. The
    one place a catalog is chosen: construction draws from it, scoring and the pass-rate
    episodes run its implementations."""
    return bundled_catalog() if source == "bundled" else load_catalog(source)


def bundled_catalog() -> list[Tool]:
    """The executable catalog shipped with ttpa_ray (see ``ttpa_ray/tools/bundled.py``)."""
    return list(CATALOG)


def _tools_from_obj(obj: Any, where: str, domain: str) -> list[Tool]:
    items = obj if isinstance(obj, list) else obj.get("tools", obj.get("api_list")) if isinstance(obj, dict) else None
    if isinstance(obj, dict) and items is None:
        items = [obj]
    if not isinstance(items, list):
        raise SchemaError(f"{where}: expected a tool, a list of tools, or {{\"tools\": [...]}}")
    out = []
    for i, item in enumerate(items):
        try:
            if isinstance(item, dict) and "api_name" in item:  # ToolBench api_list entry
                item = _from_toolbench(item)
            out.append(Tool(schema=load_tool(item, i), domain=domain))
        except SchemaError as exc:
            raise SchemaError(f"{where}: {exc}") from None
    return out


def _from_toolbench(api: dict[str, Any]) -> dict[str, Any]:
    """ToolBench ``api_list`` entry -> OpenAI bare form (its parameters are lists of dicts)."""
    props: dict[str, Any] = {}
    required = []
    for kind in ("required_parameters", "optional_parameters"):
        for p in api.get(kind) or []:
            t = str(p.get("type", "string")).lower()
            props[p["name"]] = {"type": {"str": "string", "number": "number", "int": "integer", "integer": "integer",
                                         "boolean": "boolean", "bool": "boolean", "array": "array",
                                         "object": "object"}.get(t, "string"),
                                "description": str(p.get("description", ""))}
            if kind == "required_parameters":
                required.append(p["name"])
    name = "".join(c if c.isalnum() else "_" for c in api["api_name"]).strip("_").lower() or "api"
    return {"name": name, "description": api.get("api_description") or "",
            "parameters": {"type": "object", "properties": props, "required": required}}


def load_catalog(path: str | Path) -> list[Tool]:
    """User tools from a JSON file, a JSONL file (one tool per line) or a folder of JSON files
    (ToolBench layout: one file per API provider with an ``api_list``; the folder name of a
    file is its domain). Every problem names the file (and line)."""
    path = Path(path)
    if path.is_dir():
        tools = []
        for f in sorted(path.rglob("*.json")):
            tools.extend(_tools_from_obj(_read_json(f), str(f), f.parent.name))
    elif path.suffix == ".jsonl":
        tools = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SchemaError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
                tools.extend(_tools_from_obj(obj, f"{path}:{n}", path.stem))
    elif path.is_file():
        tools = _tools_from_obj(_read_json(path), str(path), path.stem)
    else:
        raise SchemaError(f"tool catalog {path} does not exist")
    names = [t.name for t in tools]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SchemaError(f"{path}: duplicate tool names {dupes}")
    if not tools:
        raise SchemaError(f"{path}: no tools found")
    return tools


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
