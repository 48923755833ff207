"""ESM value and type checks: BFCL's string standardisation, equality, acceptable values.

Pure functions used by :mod:`ttpa_ray.score.esm`. Value *validity* follows BFCL's AST checker
(strings standardised, ``""`` marks an omittable parameter in possible answers); the value
*points* follow the released TTPA formula (exact 1, strings 0.5 + 0.5).
"""

from __future__ import annotations

import re
from typing import Any


_STD_RE = re.compile(r"[ ,./\-_*^]")


def standardize(s: str) -> str:
    """BFCL's string standardisation: drop spaces and ``,./-_*^``, lowercase, ' -> "."""
    return _STD_RE.sub("", s).lower().replace("'", '"')


def norm(v: Any) -> Any:
    """Normalise a value for BFCL-style equality (strings standardised, tuples as lists)."""
    if isinstance(v, str):
        return standardize(v)
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    return v


def same(a: Any, b: Any) -> bool:
    """Equality where bool is never equal to a number (True == 1 in Python)."""
    ta = type(a)
    if ta is type(b) and (ta is str or ta is int or ta is float and a == a):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN == NaN here: a value equal to gold is equal
    return a == b


def _dict_accepts(pred: dict[str, Any], answer: dict[str, Any]) -> bool:
    """BFCL's dict checker: each key's value is a list of acceptable values, "" = may omit."""
    for k, v in pred.items():
        acc = answer.get(k)
        if not isinstance(acc, list) or not any(same(norm(v), norm(a)) for a in acc if a != ""):
            return False
    return all(k in pred or (isinstance(acc, list) and "" in acc) for k, acc in answer.items())


def value_ok(value: Any, acceptable: list[Any], concrete: bool) -> bool:
    """Is ``value`` one of the acceptable gold values (BFCL checker semantics)?"""
    nv = norm(value)
    for a in acceptable:
        if a == "" and not concrete:
            continue
        if same(nv, norm(a)):
            return True
        if not concrete and isinstance(value, dict) and isinstance(a, dict) and _dict_accepts(value, a):
            return True
        if (not concrete and isinstance(value, list) and isinstance(a, list) and len(value) == len(a)
                and all(isinstance(x, dict) and isinstance(y, dict) and _dict_accepts(x, y) for x, y in zip(value, a))):
            return True
    return False


def value_points(value: Any, acceptable: list[Any], concrete: bool) -> float:
    """ESM value term for one argument: exact 1; strings 0.5 (case-insensitive equal) + 0.5
    (containment); the best over acceptable values."""
    best = 0.0
    for a in acceptable:
        if a == "" and not concrete:
            continue
        if isinstance(value, str) and isinstance(a, str) and value != a:
            v, g = value.lower(), a.lower()
            pts = 0.5 * (v == g) + 0.5 * (bool(v) and bool(g) and (v in g or g in v))
        elif same(value, a) or value_ok(value, [a], concrete):
            pts = 1.0
        else:
            pts = 0.0
        best = max(best, pts)
        if best == 1.0:
            break
    return best
