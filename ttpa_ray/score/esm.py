"""Error-oriented Scoring Mechanism (ESM): score predicted tool calls against gold.

Pure functions, no Ray (the Ray Data stage is :mod:`ttpa_ray.score.stage`).

The released TTPA formula, per matched (predicted, gold) call::

    esm = (3·s_name + 3·s_req + 1·s_key + 2·s_type + 2·s_value) / 11

- ``s_name`` 1 if the names match;
- ``s_req`` share of the gold function's schema-required parameters present in the prediction
  (1 when it requires none; a required parameter the gold itself omits does not count);
- for each predicted argument: key +1 if the schema has it, type +1 if its JSON type matches the
  schema (an int is accepted for a number, as BFCL does; a bool is never a number), value +1 on
  an exact match with gold, strings +0.5 for case-insensitive equality and +0.5 for
  containment (either way, case-insensitive); ``s_key``, ``s_type``, ``s_value`` are those sums
  divided by max(|predicted args|, |gold args|).

Departures, all documented here:
- gold given as BFCL possible answers: the value term takes the best acceptable value; a gold
  parameter whose acceptable values include ``""`` is optional and does not count in |gold args|;
- a turn with several calls: each gold call first takes a fully valid predicted call of the
  same name (as BFCL's parallel checker), the rest are matched to maximise (valid pairs, total
  score); the turn score is the sum of matched scores / max(#predicted, #gold);
- no call expected: 1.0 if none made, else 0.0; a call expected but none made, or undecodable
  output: 0.0.

On top of the score, error codes aligned with BFCL's AST checker: ``wrong_func_name``,
``missing_required``, ``missing_optional`` (BFCL's name for a gold parameter without a default
that the prediction omits), ``unexpected_param``, ``type_error``, ``value_error``,
``wrong_count``, ``decode_failed``, ``unexpected_call``, ``missing_call``. ``valid`` is True
when there are none (BFCL-style accept). Value validity uses BFCL's string standardisation
(case, spaces and ``,./-_*^`` ignored).

>>> tools = [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}},
...           "required": ["x"]}}]
>>> r = esm_score([{"name": "f", "arguments": {"x": 1}}], tools, gold=[{"name": "f", "arguments": {"x": 1}}])
>>> (r.score, r.errors, r.valid)
(1.0, [], True)
>>> r = esm_score('<tool_call>{"name": "f", "arguments": {"x": 2}}</tool_call>', tools,
...               gold=[{"name": "f", "arguments": {"x": 1}}])
>>> (round(r.score, 4), r.errors)
(0.8182, ['value_error'])
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ttpa_ray.config import ESMWeights
from ttpa_ray.score.values import same, value_ok, value_points
from ttpa_ray.toolcall import (DECODE_FAILED, CallFormatError, ToolCall, ToolSchema, as_call, calls_from_json, load_tool,
                               parse_calls, type_ok)

ERROR_CODES = ("decode_failed", "wrong_count", "missing_call", "unexpected_call", "wrong_func_name",
               "missing_required", "missing_optional", "unexpected_param", "type_error", "value_error")


DEFAULT_WEIGHTS = ESMWeights()


class GoldCall:
    """A gold call as acceptable values per parameter (concrete gold: one value each)."""

    __slots__ = ("name", "params", "concrete", "n_needed")

    def __init__(self, name: str, params: dict[str, list[Any]], concrete: bool):
        self.name = name
        self.params = params
        self.concrete = concrete
        # Parameters the prediction must give (all for concrete gold; those without "" otherwise).
        self.n_needed = len(params) if concrete else sum(1 for acc in params.values() if "" not in acc)

    def __repr__(self) -> str:
        return f"GoldCall({self.name!r}, {self.params!r}, concrete={self.concrete})"


@dataclass
class CallScore:
    score: float
    errors: list[str]
    messages: list[str]
    terms: dict[str, float]


@dataclass
class ESMResult:
    score: float
    errors: list[str]
    valid: bool
    messages: list[str] = field(default_factory=list)
    calls: list[tuple[int, int, CallScore]] = field(default_factory=list)
    """Matched pairs: (predicted index, gold index, its CallScore with the formula's terms)."""
    predicted: list[ToolCall] = field(default_factory=list)
    """The predicted calls as parsed (empty when none or undecodable)."""


def _gold_typed(value: Any, gold: GoldCall, key: str, spec: dict[str, Any]) -> bool:
    """BFCL's "variable" rule: gold may give a value of another type than the schema's (a
    variable name as a string, None for a float); a prediction of that type passes the type
    check (its value is still checked)."""
    if key not in gold.params:
        return False
    return any(type(a) is type(value) and not type_ok(a, spec)
               for a in gold.params[key] if gold.concrete or a != "")


# --------------------------------------------------------------------------- gold


def gold_from_calls(calls: Sequence[ToolCall | dict[str, Any]]) -> list[GoldCall]:
    out = []
    for c in calls:
        call = c if isinstance(c, ToolCall) else as_call(c)
        out.append(GoldCall(call.name, {k: [v] for k, v in call.arguments.items()}, concrete=True))
    return out


def gold_from_possible_answer(answer: Sequence[dict[str, dict[str, list[Any]]]]) -> list[GoldCall]:
    """BFCL possible answers: ``[{"func": {"param": [acceptable, ...]}}]``."""
    out = []
    for item in answer:
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"a possible answer must map one function name to its parameters, got {item!r}")
        (name, params), = item.items()
        if not isinstance(params, dict) or not all(isinstance(v, list) for v in params.values()):
            raise ValueError(f"possible answer for {name!r}: each parameter needs a list of acceptable values")
        out.append(GoldCall(name, dict(params), concrete=False))
    return out


# --------------------------------------------------------------------------- one call


def score_call(pred: ToolCall, gold: GoldCall, schema: ToolSchema | None,
               weights: ESMWeights = DEFAULT_WEIGHTS, explain: bool = True) -> CallScore:
    """Score one predicted call against one gold call under the gold function's schema.

    Gold is the reference where gold and schema disagree (a schema-required parameter the
    gold omits is not required; a gold value of another type than the schema's is accepted,
    BFCL's "variable" rule), so the gold call always scores 1.0.
    """
    errors: list[str] = []
    msgs: list[str] = []
    args = pred.arguments
    props = schema.properties if schema is not None else {}
    params, concrete = gold.params, gold.concrete
    if schema is not None:
        required = schema.required
        for r in required:
            if r not in params:
                required = tuple(r for r in schema.required if r in params)
                break
    else:
        required = tuple(k for k, v in params.items() if concrete or "" not in v)

    s_name = 1.0 if pred.name == gold.name else 0.0
    if not s_name:
        errors.append("wrong_func_name")
        if explain:
            msgs.append(f"function {pred.name!r}, expected {gold.name!r}")
    n_present = 0
    for r in required:
        if r in args:
            n_present += 1
    s_req = n_present / len(required) if required else 1.0
    if n_present < len(required):
        errors.append("missing_required")
        if explain:
            msgs.append(f"{gold.name}: missing required {[r for r in required if r not in args]}")

    key = typ = val = 0.0
    n_in_gold = 0
    for k, v in args.items():
        spec = props.get(k)
        acc = params.get(k)
        if acc is not None:
            n_in_gold += 1
        known = spec is not None or (acc is not None if concrete else schema is None)
        if not known or acc is None:
            errors.append("unexpected_param")
            if explain:
                msgs.append(f"{gold.name}: unexpected parameter {k!r}")
            if not known:
                continue
        key += 1
        if spec is not None and not type_ok(v, spec) and not _gold_typed(v, gold, k, spec):
            errors.append("type_error")
            if explain:
                msgs.append(f"{gold.name}.{k}: {type(v).__name__} {v!r} does not match type {spec.get('type')!r}")
            continue
        typ += 1
        if acc is None:
            continue
        for a in acc:  # exact match: the common case
            if (concrete or a != "") and same(v, a):
                val += 1.0
                break
        else:
            val += value_points(v, acc, concrete)
            if not value_ok(v, acc, concrete):
                errors.append("value_error")
                if explain:
                    msgs.append(f"{gold.name}.{k}: {v!r} not in {acc!r}")
    missing_opt = [] if n_in_gold == len(params) else [
        k for k, acc in params.items() if k not in args and k not in required and (concrete or "" not in acc)]
    if missing_opt:
        errors.append("missing_optional")
        if explain:
            msgs.append(f"{gold.name}: gold sets {missing_opt}, prediction omits them")

    n_gold = gold.n_needed
    denom = max(len(args), n_gold)
    s_key, s_type, s_value = (key / denom, typ / denom, val / denom) if denom else (1.0, 1.0, 1.0)
    w = weights
    score = (w.name * s_name + w.required * s_req + w.key * s_key + w.type * s_type + w.value * s_value) / w.total
    return CallScore(min(1.0, max(0.0, score)), _dedupe(errors), msgs,
                     {"name": s_name, "required": s_req, "key": s_key, "type": s_type, "value": s_value})


def _dedupe(codes: list[str]) -> list[str]:
    if not codes:
        return []
    seen = dict.fromkeys(codes)
    return [c for c in ERROR_CODES if c in seen]


# --------------------------------------------------------------------------- a turn


def _tool_name(t: Any) -> Any:
    if isinstance(t, ToolSchema):
        return t.name
    if isinstance(t, dict):
        fn = t.get("function") if isinstance(t.get("function"), dict) else t
        return fn.get("name")
    return None


def _schemas(tools: Sequence[Any], needed: set[str]) -> dict[str, ToolSchema]:
    """Validated schemas of the gold functions only (the others are never consulted).
    Pass :class:`ToolSchema` objects to skip validation (the scoring stage caches them)."""
    out = {}
    for i, t in enumerate(tools):
        if isinstance(t, ToolSchema):
            out[t.name] = t
        elif _tool_name(t) in needed:
            s = load_tool(t, i)
            out[s.name] = s
    return out


def _match(preds: list[ToolCall], golds: list[GoldCall], schemas: dict[str, ToolSchema],
           weights: ESMWeights) -> list[tuple[int, int, CallScore]]:
    """One-to-one matching of predicted to gold calls.

    First, as BFCL's parallel checker does, each gold call takes a free predicted call of the
    same name that is fully valid (trying the one at the same position first). The calls left
    over are then matched optimally, maximising (#valid pairs, total score).
    """
    n, m = len(preds), len(golds)
    if min(n, m) == 0:
        return []
    if n == m == 1:
        return [(0, 0, score_call(preds[0], golds[0], schemas.get(golds[0].name), weights))]
    pairs: list[tuple[int, int, CallScore]] = []
    tried: dict[tuple[int, int], CallScore] = {}
    free = set(range(n))
    left_gold = []
    for j, g in enumerate(golds):
        hit = None
        for i in sorted((i for i in free if preds[i].name == g.name), key=lambda i: abs(i - j)):
            cs = tried[(i, j)] = score_call(preds[i], g, schemas.get(g.name), weights, explain=False)
            if not cs.errors:
                hit = (i, j, cs)
                break
        if hit is None:
            left_gold.append(j)
        else:
            free.discard(hit[0])
            pairs.append(hit)
    left_pred = sorted(free)
    if left_pred and left_gold:
        pairs.extend(_best_assignment(preds, golds, left_pred, left_gold, schemas, weights, tried))
    return sorted(pairs, key=lambda p: p[1])


def _best_assignment(preds: list[ToolCall], golds: list[GoldCall], rows: list[int], cols: list[int],
                     schemas: dict[str, ToolSchema], weights: ESMWeights,
                     tried: dict[tuple[int, int], CallScore]) -> list[tuple[int, int, CallScore]]:
    table = {(i, j): tried.get((i, j)) or score_call(preds[i], golds[j], schemas.get(golds[j].name), weights,
                                                      explain=False)
             for i in rows for j in cols}

    def value(cand: list[tuple[int, int]]) -> tuple[int, float]:
        return (sum(not table[p].errors for p in cand), sum(table[p].score for p in cand))

    best: list[tuple[int, int]] = []
    if max(len(rows), len(cols)) <= 7:
        best_v = (-1, -1.0)
        if len(rows) <= len(cols):
            options = (list(zip(rows, perm)) for perm in itertools.permutations(cols, len(rows)))
        else:
            options = (list(zip(perm, cols)) for perm in itertools.permutations(rows, len(cols)))
        for cand in options:
            if (v := value(cand)) > best_v:
                best, best_v = cand, v
    else:  # greedy for unusually long turns
        used_i, used_j = set(), set()
        for (i, j) in sorted(table, key=lambda p: (not table[p].errors, table[p].score), reverse=True):
            if i not in used_i and j not in used_j:
                best.append((i, j))
                used_i.add(i)
                used_j.add(j)
    # Explain the chosen pairs that have errors (matching itself skipped the messages).
    return [(i, j, score_call(preds[i], golds[j], schemas.get(golds[j].name), weights) if table[(i, j)].errors
             else table[(i, j)]) for i, j in best]


def esm_score(prediction: Any, tools: Sequence[Any], gold: Sequence[Any] | None = None,
              possible_answer: Sequence[Any] | None = None, weights: ESMWeights = DEFAULT_WEIGHTS) -> ESMResult:
    """Score one turn. ``prediction`` is raw model text or a list of calls; gold is concrete
    ``gold`` calls or BFCL ``possible_answer`` (an empty list: no call expected).

    Raises ValueError only for bad *gold or schemas* (the caller's data); anything a model
    wrote is scored.
    """
    if possible_answer is not None:
        golds = gold_from_possible_answer(possible_answer)
    else:
        golds = gold_from_calls(gold or [])
    schemas = _schemas(tools, {g.name for g in golds})
    if isinstance(prediction, str):
        parsed = parse_calls(prediction)
        if parsed.error:
            return ESMResult(0.0, [DECODE_FAILED], False, [parsed.reason or "decode failed"])
        preds = parsed.calls
    else:
        try:
            if prediction is None:
                preds = []
            elif isinstance(prediction, (list, tuple)):
                preds = [c if isinstance(c, ToolCall) else as_call(c) for c in prediction]
            else:
                preds = calls_from_json(prediction)
        except CallFormatError as exc:
            return ESMResult(0.0, [DECODE_FAILED], False, [str(exc)])
    if not golds:
        if preds:
            return ESMResult(0.0, ["unexpected_call"], False, [f"{len(preds)} call(s) where none was expected"])
        return ESMResult(1.0, [], True)
    if not preds:
        return ESMResult(0.0, ["missing_call"], False, [f"no call; expected {[g.name for g in golds]}"])
    pairs = _match(preds, golds, schemas, weights)
    errors: list[str] = []
    msgs: list[str] = []
    if len(preds) != len(golds):
        errors.append("wrong_count")
        msgs.append(f"{len(preds)} call(s), expected {len(golds)}")
    for _, _, cs in pairs:
        errors.extend(cs.errors)
        msgs.extend(cs.messages)
    total = sum(cs.score for _, _, cs in pairs) / max(len(preds), len(golds))
    codes = _dedupe(errors)
    return ESMResult(total, codes, not codes, msgs, [(i, j, cs) for i, j, cs in pairs], preds)
