"""Token-level preference sampling (TPS), the pure parts: where to branch, and pairs.

No Ray, no engine. :mod:`ttpa_ray.sample.stage` runs them on the target model.

1. ``decision_spans(gold_text)``: character spans of the decisions inside each tool call
   in the gold assistant text: the function name, every argument key, every argument value
   (top level of ``arguments``; a nested value is one span). Structure (braces, quotes,
   commas) is never a branch point.
2. ``branch_points(...)``: token positions inside those spans where the target model puts at
   least ``min_prob`` on a token other than the gold one (read from teacher-forced top-k
   prompt log-probs), most probable alternatives first, at most ``max_branches`` per call.
3. ``make_pairs(...)``: per turn, chosen = the best candidate, or the gold when the best
   scores below ``threshold``; rejected = every candidate scoring strictly lower. Candidates
   tied with the chosen one are dropped; a turn with no rejected candidate gives no pair.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

_decoder = json.JSONDecoder()


def _ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def _object_spans(s: str, i: int, visit: Any) -> int:
    """Scan a JSON object at ``s[i]``; call ``visit(key, key_span, value, value_span)`` per
    member; return the index after the object. Raises ValueError on malformed JSON."""
    i = _ws(s, i)
    if i >= len(s) or s[i] != "{":
        raise ValueError(f"expected an object at char {i}")
    i = _ws(s, i + 1)
    if i < len(s) and s[i] == "}":
        return i + 1
    while True:
        k0 = i
        key, i = _decoder.raw_decode(s, i)
        if not isinstance(key, str):
            raise ValueError(f"expected a key at char {k0}")
        i = _ws(s, i)
        if i >= len(s) or s[i] != ":":
            raise ValueError(f"expected ':' at char {i}")
        v0 = _ws(s, i + 1)
        value, v1 = _decoder.raw_decode(s, v0)
        visit(key, (k0 + 1, i if s[i - 1] != '"' else i - 1), value, (v0, v1))
        i = _ws(s, v1)
        if i < len(s) and s[i] == ",":
            i = _ws(s, i + 1)
            continue
        if i < len(s) and s[i] == "}":
            return i + 1
        raise ValueError(f"expected ',' or '}}' at char {i}")


def decision_spans(text: str) -> list[tuple[int, int, str, int]]:
    """(start, end, kind, call_index) of each decision in the ``<tool_call>`` blocks of
    ``text``; kind is ``name``, ``key`` or ``value``. String spans exclude the quotes.

    >>> t = '<tool_call>\\n{"name": "f", "arguments": {"city": "Oslo", "n": 2}}\\n</tool_call>'
    >>> [(t[a:b], k) for a, b, k, _ in decision_spans(t)]
    [('f', 'name'), ('city', 'key'), ('Oslo', 'value'), ('n', 'key'), ('2', 'value')]
    """
    spans: list[tuple[int, int, str, int]] = []
    pos = 0
    call = 0
    while (start := text.find("<tool_call>", pos)) >= 0:
        body = start + len("<tool_call>")
        end = text.find("</tool_call>", body)
        end = len(text) if end < 0 else end

        def top(key: str, kspan: tuple[int, int], value: Any, vspan: tuple[int, int], call: int = call) -> None:
            if key == "name" and isinstance(value, str):
                spans.append((vspan[0] + 1, vspan[1] - 1, "name", call))
            elif key in ("arguments", "parameters") and isinstance(value, dict):
                def arg(k: str, ks: tuple[int, int], v: Any, vs: tuple[int, int]) -> None:
                    spans.append((ks[0], ks[1], "key", call))
                    quoted = isinstance(v, str)
                    spans.append((vs[0] + quoted, vs[1] - quoted, "value", call))

                _object_spans(text, vspan[0], arg)

        try:
            _object_spans(text[:end], body, top)
        except ValueError:
            pass  # a malformed block has no decisions to branch on
        pos = end
        call += 1
    return sorted(spans)


def token_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int, str, int]]
                ) -> list[tuple[str, int] | None]:
    """Per token (by its char offsets), the (kind, call) of the decision span it overlaps."""
    out: list[tuple[str, int] | None] = []
    for a, b in offsets:
        hit = None
        for s0, s1, kind, call in spans:
            if a < s1 and s0 < b:
                hit = (kind, call)
                break
        out.append(hit)
    return out


@dataclass(frozen=True)
class Branch:
    position: int
    """Index in the gold completion's tokens where the alternative replaces the gold token."""
    token_id: int
    prob: float
    kind: str
    call: int


def branch_points(completion_ids: list[int], completion_logprobs: list[dict[int, float] | None],
                  roles: list[tuple[str, int] | None], min_prob: float, max_branches: int) -> list[Branch]:
    """Alternatives worth branching on: inside decision spans, prob >= ``min_prob``, not the
    gold token; the ``max_branches`` most probable per call."""
    per_call: dict[int, list[Branch]] = {}
    for pos, (gold, top, role) in enumerate(zip(completion_ids, completion_logprobs, roles)):
        if role is None or top is None:
            continue
        for tok, lp in top.items():
            p = math.exp(lp)
            if tok != gold and p >= min_prob:
                per_call.setdefault(role[1], []).append(Branch(pos, int(tok), p, role[0], role[1]))
    out: list[Branch] = []
    for call in sorted(per_call):
        out.extend(sorted(per_call[call], key=lambda b: (-b.prob, b.position))[:max_branches])
    return sorted(out, key=lambda b: (b.position, -b.prob))


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first token where ``a`` and ``b`` differ (the shorter length if one is a prefix)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def make_pairs(candidates: list[dict[str, Any]], gold: dict[str, Any], threshold: float
               ) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], str]:
    """Pairs of (chosen, rejected) for one turn, and why there are none when so.

    ``candidates`` and ``gold`` are dicts with at least ``token_ids`` and ``esm_score``.
    Candidates whose token ids equal the gold's are not rejected candidates.
    """
    pool = [c for c in candidates if c["esm_score"] is not None and c["token_ids"] != gold["token_ids"]]
    if not pool:
        return [], "no_candidate"
    best = max(pool, key=lambda c: c["esm_score"])
    chosen = gold if best["esm_score"] < threshold else best
    rejected = [c for c in pool if c is not chosen and c["esm_score"] < chosen["esm_score"]]
    if not rejected:
        return [], "no_rejected"
    return [(chosen, r) for r in rejected], ""
