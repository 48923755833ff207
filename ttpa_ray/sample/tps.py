"""Token-level preference sampling (TPS), the pure parts: where to branch, and pairs.

No Ray, no engine. :mod:`ttpa_ray.sample.stage` runs them on the target model.

1. ``decision_spans(gold_text)``: character spans of the decisions inside each tool call
   in the gold assistant text: the function name, every argument key, every argument value
   (top level of ``arguments``; a nested value is one span). Structure (braces, quotes,
   commas) is never a branch point.
2. ``branch_points(...)``: token positions inside those spans where the target model puts at
   least ``min_prob`` on a token other than the gold one (read from teacher-forced top-k
   prompt log-probs), most probable alternatives first, at most ``max_branches`` per call.
3. ``call_or_not_branch(...)``: one more branch per gold turn, at its first token, whatever
   its probability (kind ``call-or-not``): call or answer is the first decision of a turn.
4. ``make_pairs(...)``: per turn, chosen = the best candidate, or the gold when the best
   scores below ``threshold`` or (``chosen_must_be_valid``) has an ESM error; rejected = every
   candidate scoring strictly lower. Candidates tied with the chosen one are dropped; a turn
   with no rejected candidate gives no pair. In a no-call turn the gold text is always chosen.

Departures from the paper and the authors' released code:

- ``chosen_must_be_valid`` (``score.chosen_must_be_valid``, on by default): the released rule
  lets a candidate with score >= threshold replace the gold even with an error, e.g. a call
  with one wrong value (0.818 >= 0.8, ``value_error``) becomes the *chosen* side;
- the call-or-not branch at position 0 (ours): a call turn's branch that answers in text is a
  ``missing_call`` rejected side, a no-call turn's branch that calls is ``unexpected_call``;
- no-call (irrelevance) turns (ours): ESM scores every text answer 1.0 whatever it says, so a
  sampled text is never chosen over the gold text; only candidates that call are rejected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
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


CALL_OR_NOT = "call-or-not"
"""The kind of the branch at a turn's first token (beside ``name``, ``key``, ``value``)."""
CALL_TAG = "<tool_call>"


@dataclass(frozen=True)
class Branch:
    position: int
    """Index in the gold completion's tokens where the alternative replaces the gold token."""
    token_id: int
    prob: float
    kind: str
    """``name``, ``key``, ``value`` (a decision inside a call) or ``call-or-not`` (position 0)."""
    call: int
    """Index of the call in the turn; -1 for ``call-or-not``."""


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


def opens_call(token_text: str) -> bool:
    """Does a turn whose first token is this text start a tool call (a ``<tool_call>`` block,
    the format of the project's chat template)?

    >>> opens_call("<"), opens_call(" <tool"), opens_call("<tool_call>"), opens_call("I"), opens_call(" ")
    (True, True, True, False, False)
    """
    s = token_text.lstrip()
    return bool(s) and (CALL_TAG.startswith(s) or s.startswith(CALL_TAG))


def call_side(chosen: str, rejected: str, divergence_index: int) -> int:
    """Which side of a pair that differs at its first token opens a tool call: 1 the chosen,
    2 the rejected, 0 neither or both (or the pair differs later). ``train.binary_decision``
    scores such a pair's first token as the binary call-or-answer decision.

    >>> call_side("<tool_call>{}", "Here is what", 0), call_side("I'm sorry", "<tool_call>", 0)
    (1, 2)
    >>> call_side("<tool_call>a", "<tool_call>b", 0), call_side("<tool_call>", "Here", 3)
    (0, 0)
    """
    if divergence_index != 0:
        return 0
    c, r = chosen.lstrip().startswith(CALL_TAG), rejected.lstrip().startswith(CALL_TAG)
    return 1 if c and not r else 2 if r and not c else 0


def call_or_not_branch(gold_id: int, top: dict[int, float] | None, opens: Callable[[int], bool]
                       ) -> Branch | None:
    """The one branch at a turn's first token, whatever ``min_prob``: the most probable
    alternative that flips the decision (``opens(token)`` differs from the gold's: answer
    instead of call, or call instead of answer) when ``top`` holds one, else the most probable
    alternative. One per turn: the branch is completed like any other, and one wrong decision
    per turn is what the pair teaches. None when ``top`` has no alternative.

    >>> top = {5: math.log(0.9), 6: math.log(0.06), 7: math.log(0.01)}
    >>> b = call_or_not_branch(5, top, opens=lambda t: t == 7)      # gold 5 answers; 7 would call
    >>> (b.position, b.token_id, round(b.prob, 2), b.kind)
    (0, 7, 0.01, 'call-or-not')
    >>> call_or_not_branch(5, top, opens=lambda t: False).token_id
    6
    """
    alts = [(int(tok), math.exp(lp)) for tok, lp in (top or {}).items() if tok != gold_id]
    if not alts:
        return None
    gold_opens = opens(gold_id)
    tok, p = max(alts, key=lambda a: (opens(a[0]) != gold_opens, a[1]))
    return Branch(0, tok, p, CALL_OR_NOT, -1)


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first token where ``a`` and ``b`` differ (the shorter length if one is a prefix)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def make_pairs(candidates: list[dict[str, Any]], gold: dict[str, Any], threshold: float, *,
               chosen_must_be_valid: bool, no_call: bool = False
               ) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], str]:
    """Pairs of (chosen, rejected) for one turn, and why there are none when so.

    ``candidates`` and ``gold`` are dicts with at least ``token_ids``, ``esm_score`` and
    ``valid`` (no ESM error). Candidates whose token ids equal the gold's are not rejected
    candidates. ``no_call``: the gold is a text answer, always the chosen side.
    """
    pool = [c for c in candidates if c["esm_score"] is not None and c["token_ids"] != gold["token_ids"]]
    if not pool:
        return [], "no_candidate"
    best = max(pool, key=lambda c: c["esm_score"])
    takes_over = (not no_call and best["esm_score"] >= threshold
                  and (bool(best["valid"]) or not chosen_must_be_valid))
    chosen = best if takes_over else gold
    rejected = [c for c in pool if c is not chosen and c["esm_score"] < chosen["esm_score"]]
    if not rejected:
        return [], "no_rejected"
    return [(chosen, r) for r in rejected], ""
