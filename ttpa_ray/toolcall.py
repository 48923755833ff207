"""The tool-call language: tool schemas, parsing model output into calls, rendering calls.

Pure functions, no Ray. Parsing never raises on model output: it returns a
:class:`ParseResult` whose ``error`` is ``"decode_failed"`` (with a reason) when the text
tries to call a tool and the call cannot be read.

Accepted call formats (what the chat templates of supported models produce, and more):

>>> parse_calls('<tool_call>\\n{"name": "f", "arguments": {"x": 1}}\\n</tool_call>').calls
[ToolCall(name='f', arguments={'x': 1})]
>>> parse_calls('```json\\n[{"name": "f", "arguments": "{\\\\"x\\\\": 2}"}]\\n```').calls
[ToolCall(name='f', arguments={'x': 2})]
>>> parse_calls('[f(x=3), g(y="a")]').calls
[ToolCall(name='f', arguments={'x': 3}), ToolCall(name='g', arguments={'y': 'a'})]
>>> parse_calls('It is sunny.').calls
[]
>>> parse_calls('<tool_call>{"name": "f", "arguments": {</tool_call>').error
'decode_failed'
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------- schemas

# BFCL writes Python type names; JSON Schema writes its own. Both are accepted.
TYPE_ALIASES = {"dict": "object", "float": "number", "tuple": "array", "int": "integer", "str": "string",
                "bool": "boolean", "list": "array", "double": "number", "long": "integer"}
KNOWN_TYPES = {"object", "number", "integer", "string", "boolean", "array", "null", "any"}


class SchemaError(ValueError):
    """A malformed tool schema; the message names the tool and the field."""


@dataclass(frozen=True)
class ToolSchema:
    name: str
    description: str
    properties: dict[str, dict[str, Any]]
    required: tuple[str, ...]
    raw: dict[str, Any] = field(compare=False, repr=False)

    def openai(self) -> dict[str, Any]:
        """The OpenAI function-calling form (what chat templates take as ``tools``)."""
        params = {"type": "object", "properties": self.properties, "required": list(self.required)}
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": params}}


def _check_param(tool: str, path: str, spec: Any, problems: list[str]) -> None:
    if not isinstance(spec, dict):
        problems.append(f"tool {tool!r}: {path} must be an object (a JSON Schema), got {type(spec).__name__}")
        return
    types = spec.get("type")
    for t in types if isinstance(types, list) else [types] if types is not None else []:
        if not isinstance(t, str) or TYPE_ALIASES.get(t, t) not in KNOWN_TYPES:
            problems.append(f"tool {tool!r}: {path}.type {t!r} is not a JSON Schema type "
                            f"(use one of {sorted(KNOWN_TYPES - {'any'})})")
    if "enum" in spec and not isinstance(spec["enum"], list):
        problems.append(f"tool {tool!r}: {path}.enum must be a list")
    if isinstance(spec.get("items"), dict):
        _check_param(tool, f"{path}.items", spec["items"], problems)
    if isinstance(spec.get("properties"), dict):
        for k, v in spec["properties"].items():
            _check_param(tool, f"{path}.properties.{k}", v, problems)


def load_tool(item: Any, index: int = 0) -> ToolSchema:
    """Validate one tool in OpenAI form (``{"type": "function", "function": {...}}``) or bare
    form (``{"name", "description", "parameters"}``)."""
    where = f"tools[{index}]"
    if not isinstance(item, dict):
        raise SchemaError(f"{where}: a tool must be a JSON object, got {type(item).__name__}")
    fn = item.get("function") if item.get("type") == "function" or isinstance(item.get("function"), dict) else item
    if not isinstance(fn, dict):
        raise SchemaError(f"{where}: `function` must be an object with name, description, parameters")
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SchemaError(f"{where}: `name` is missing or not a non-empty string")
    label = f"{where} ({name})"
    problems: list[str] = []
    desc = fn.get("description", "")
    if not isinstance(desc, str):
        problems.append(f"tool {name!r}: description must be a string")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise SchemaError(f"{label}: parameters must be a JSON Schema object, got {type(params).__name__}")
    ptype = TYPE_ALIASES.get(params.get("type", "object"), params.get("type", "object"))
    if ptype != "object":
        problems.append(f"tool {name!r}: parameters.type must be 'object' (or BFCL's 'dict'), got {ptype!r}")
    props = params.get("properties", {})
    if not isinstance(props, dict):
        problems.append(f"tool {name!r}: parameters.properties must be an object")
        props = {}
    for key, spec in props.items():
        _check_param(name, f"parameters.properties.{key}", spec, problems)
    required = params.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        problems.append(f"tool {name!r}: parameters.required must be a list of parameter names")
        required = []
    missing = [r for r in required if r not in props]
    if missing:
        problems.append(f"tool {name!r}: parameters.required names {missing}, which are not in properties")
    if problems:
        raise SchemaError(f"{label}: " + "; ".join(problems))
    return ToolSchema(name=name, description=desc or "", properties=props, required=tuple(required), raw=item)


def load_tools(items: Iterable[Any]) -> list[ToolSchema]:
    """Validate a list of tools; every malformed tool is reported, then one error is raised."""
    tools, problems = [], []
    for i, item in enumerate(items):
        try:
            tools.append(load_tool(item, i))
        except SchemaError as exc:
            problems.append(str(exc))
    names = [t.name for t in tools]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"duplicate tool names: {dupes}")
    if problems:
        raise SchemaError("; ".join(problems))
    return tools


def normalize_type(t: Any) -> Any:
    """A schema's ``type`` (a name or a list of names) in JSON Schema's names."""
    if isinstance(t, list):
        return [TYPE_ALIASES.get(x, x) for x in t]
    return TYPE_ALIASES.get(t, t)


def json_schema_types(spec: Any) -> Any:
    """A parameters schema with every ``type`` in JSON Schema's names, at every level (BFCL
    writes Python names: dict, float, tuple ...). Parameter names are data, never types.

    >>> json_schema_types({"type": "dict", "properties": {"type": {"type": "float"}, "xs": {"type": "tuple",
    ...                    "items": {"type": "int"}}}})
    {'type': 'object', 'properties': {'type': {'type': 'number'}, 'xs': {'type': 'array', 'items': {'type': 'integer'}}}}
    """
    if isinstance(spec, list):
        return [json_schema_types(x) for x in spec]
    if not isinstance(spec, dict):
        return spec
    out = {k: json_schema_types(v) for k, v in spec.items()}
    if isinstance(spec.get("type"), (str, list)):
        out["type"] = normalize_type(spec["type"])
    if isinstance(spec.get("properties"), dict):
        out["properties"] = {k: json_schema_types(v) for k, v in spec["properties"].items()}
    return out


PY_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                          "boolean": (bool,), "array": (list, tuple), "object": (dict,),
                                          "null": (type(None),)}


def type_ok(value: Any, spec: dict[str, Any]) -> bool:
    """JSON type of ``value`` matches the parameter schema (arrays checked item by item)."""
    t = spec.get("type")
    tv = type(value)
    if (t == "string" and tv is str) or (t == "integer" and tv is int) or (t in ("number", "float") and tv in (int, float)):
        return True
    t = normalize_type(t)
    if t is None or t == "any":
        return True
    types = t if isinstance(t, list) else [t]
    for ty in types:
        py = PY_TYPES.get(ty)
        if py is None:
            return True
        if isinstance(value, bool) and ty in ("integer", "number"):
            continue
        if isinstance(value, py):
            if ty == "array" and isinstance(spec.get("items"), dict):
                return all(type_ok(x, spec["items"]) for x in value)
            return True
    return False


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ParseResult:
    calls: list[ToolCall]
    error: str | None = None
    """None, or ``"decode_failed"``."""
    reason: str | None = None
    content: str = ""
    """Text outside the calls (the model's prose)."""


DECODE_FAILED = "decode_failed"
CALL_TAG = "<tool_call>"   # Hermes-style calls, as the chat templates of the bundled models write them


def call_token_id(tokenizer: Any) -> int:
    """The first token of :data:`CALL_TAG` under ``tokenizer``: where a completion that calls
    starts, so its probability at a turn's first position is P(call)."""
    ids = tokenizer(CALL_TAG, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer encodes {CALL_TAG!r} as no tokens")
    return int(ids[0])
_FENCE_RE = re.compile(r"```(?:json|tool_call|python)?\s*\n?(.*?)```", re.S)
_CALL_KEYS = ("name", "function")


class CallFormatError(ValueError):
    """A model output or call object that is not a tool call in any accepted shape."""


def as_call(obj: Any) -> ToolCall:
    """One call object in any accepted shape -> ToolCall (raises CallFormatError)."""
    if not isinstance(obj, dict):
        raise CallFormatError(f"a call must be a JSON object, got {type(obj).__name__}")
    if isinstance(obj.get("function"), dict):  # OpenAI: {"type": "function", "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    if name is None and isinstance(obj.get("function"), str):
        name = obj["function"]
    if not isinstance(name, str) or not name:
        raise CallFormatError(f"call has no function name (keys: {sorted(obj)[:6]})")
    args = obj.get("arguments", obj.get("parameters", obj.get("args", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise CallFormatError(f"arguments of {name!r} are a string that is not JSON: {exc}") from None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise CallFormatError(f"arguments of {name!r} must be an object, got {type(args).__name__}")
    return ToolCall(name=name, arguments=args)


def calls_from_json(obj: Any) -> list[ToolCall]:
    """Calls from already-decoded JSON: one call, a list, or ``{"tool_calls": [...]}``."""
    if isinstance(obj, dict) and isinstance(obj.get("tool_calls"), list):
        obj = obj["tool_calls"]
    items = obj if isinstance(obj, list) else [obj]
    return [as_call(x) for x in items]


def _py_value(node: ast.AST) -> Any:
    return ast.literal_eval(node)


def _python_calls(text: str) -> list[ToolCall] | None:
    """``f(a=1)`` or ``[f(a=1), g(b="x")]`` (BFCL / Llama pythonic style); None if not that."""
    src = text.strip()
    if not src or not re.match(r"^\[?\s*[A-Za-z_][\w.]*\s*\(", src):
        return None
    try:
        tree = ast.parse(src, mode="eval").body
    except SyntaxError:
        return None
    nodes = tree.elts if isinstance(tree, ast.List) else [tree]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = ast.unparse(node.func)
        try:
            args = {kw.arg: _py_value(kw.value) for kw in node.keywords if kw.arg}
        except (ValueError, SyntaxError):
            return None
        calls.append(ToolCall(name=name, arguments=args))
    return calls


_decode = json.JSONDecoder().decode


def _loads(blob: str) -> Any:
    blob = blob.strip()
    try:
        return _decode(blob)
    except json.JSONDecodeError as exc:
        raise CallFormatError(f"not valid JSON ({exc.msg} at char {exc.pos}): {blob[:80]!r}") from None


def parse_calls(text: Any) -> ParseResult:
    """Parse raw model output into calls. Never raises."""
    if not isinstance(text, str):
        return ParseResult([], DECODE_FAILED, f"model output must be text, got {type(text).__name__}")
    try:
        return _parse(text)
    except CallFormatError as exc:
        return ParseResult([], DECODE_FAILED, str(exc))
    except (RecursionError, ValueError, TypeError) as exc:  # pathological input, e.g. very deep nesting
        return ParseResult([], DECODE_FAILED, f"{type(exc).__name__}: {str(exc)[:120]}")


def _parse(text: str) -> ParseResult:
    if "<tool_call>" in text:
        # str.partition instead of a regex: this is the hot path of scoring.
        first, *blocks = text.split("<tool_call>")
        calls: list[ToolCall] = []
        content = [first]
        for block in blocks:
            blob, _, rest = block.partition("</tool_call>")
            content.append(rest)
            calls.extend(calls_from_json(_loads(blob)))
        return ParseResult(calls, content="".join(content).strip())
    stripped = text.strip()
    if stripped.startswith("[TOOL_CALLS]"):  # Mistral
        return ParseResult(calls_from_json(_loads(stripped.removeprefix("[TOOL_CALLS]"))))
    fences = _FENCE_RE.findall(text)
    for blob in fences:
        body = blob.strip()
        if body.startswith(("{", "[")):
            return ParseResult(calls_from_json(_loads(body)), content=_FENCE_RE.sub("", text).strip())
        py = _python_calls(body)
        if py is not None:
            return ParseResult(py, content=_FENCE_RE.sub("", text).strip())
    if stripped.startswith(("{", "[")):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as exc:
            py = _python_calls(stripped)
            if py is not None:
                return ParseResult(py)
            raise CallFormatError(f"output starts like JSON but is not ({exc.msg} at char {exc.pos})") from None
        if _looks_like_call(obj):
            return ParseResult(calls_from_json(obj))
        raise CallFormatError("JSON output is not a tool call (no `name`)")
    py = _python_calls(stripped)
    if py is not None:
        return ParseResult(py)
    return ParseResult([], content=stripped)


def _looks_like_call(obj: Any) -> bool:
    if isinstance(obj, list):
        return bool(obj) and all(isinstance(x, dict) and any(k in x for k in _CALL_KEYS) for x in obj)
    return isinstance(obj, dict) and (any(k in obj for k in _CALL_KEYS) or "tool_calls" in obj)


# --------------------------------------------------------------------------- rendering


def render_calls(calls: Iterable[ToolCall | dict[str, Any]]) -> str:
    """Hermes-style text of calls, the format the project's chat template writes."""
    blocks = []
    for c in calls:
        call = c if isinstance(c, ToolCall) else as_call(c)
        blocks.append('<tool_call>\n{"name": ' + json.dumps(call.name) + ', "arguments": '
                      + json.dumps(call.arguments, ensure_ascii=False) + "}\n</tool_call>")
    return "\n".join(blocks)


def assistant_message(calls: Iterable[ToolCall], content: str = "") -> dict[str, Any]:
    """An OpenAI-format assistant message: ``content``, and ``tool_calls`` when there are calls
    (a text answer has no ``tool_calls`` key: some templates test for the key, not for calls)."""
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    tool_calls = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return msg


def render_with_template(tokenizer: Any, messages: list[dict[str, Any]], calls: list[ToolCall],
                         tools: list[dict[str, Any]] | None = None, content: str = "") -> str:
    """The assistant turn text of ``calls`` (with no calls: of the text answer ``content``) as
    the model's own chat template writes it: the rendering of (messages + that turn) minus the
    rendering of messages with the generation prompt."""
    prefix = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [assistant_message(calls, content)], tools=tools,
                                         tokenize=False)
    if not full.startswith(prefix):
        raise ValueError("the chat template renders history differently with an assistant turn appended; "
                         "cannot isolate the assistant turn's text")
    return full[len(prefix):]
