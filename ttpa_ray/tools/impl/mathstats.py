"""Math and statistics tools: descriptive statistics, safe expression evaluation, linear
regression, quadratic equations, percent change, prime factorization, GCD/LCM.

:func:`evaluate_expression` parses with :mod:`ast` and evaluates only numbers, arithmetic
operators, a fixed set of math functions and the caller's variables (never ``eval``).
"""

from __future__ import annotations

import ast
import math
import operator
import statistics
from typing import Any

from ttpa_ray.tools.impl._common import req_bool, req_choice, req_int, req_list, req_num, req_obj, req_str
from ttpa_ray.tools.impl._schema import array, boolean, enum, integer, number, spec, string


def _numbers(name: str, values: Any, lo: int = 1, hi: int = 10000) -> list[float]:
    return [req_num(f"{name}[{i}]", v, -1e100, 1e100) for i, v in enumerate(req_list(name, values, lo, hi))]


def _percentile(ordered: list[float], p: float) -> float:
    pos = (len(ordered) - 1) * p / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def calculate_statistics(values: list[float], percentiles: list[float] | None = None, sample: bool = True,
                         decimals: int = 4) -> dict[str, Any]:
    data = _numbers("values", values)
    pcts = _numbers("percentiles", [25, 50, 75] if percentiles is None else percentiles, 0, 20)
    if any(not 0 <= p <= 100 for p in pcts):
        raise ValueError("`percentiles` must be between 0 and 100")
    sample = req_bool("sample", sample)
    decimals = req_int("decimals", decimals, 0, 10)
    if sample and len(data) < 2:
        raise ValueError("a sample standard deviation needs at least 2 values (or set sample=false)")
    ordered = sorted(data)
    var = statistics.variance(data) if sample else statistics.pvariance(data)
    counts: dict[float, int] = {}
    for v in data:
        counts[v] = counts.get(v, 0) + 1
    top = max(counts.values())
    r = lambda x: round(x, decimals)  # noqa: E731
    return {"count": len(data), "sum": r(math.fsum(data)), "mean": r(statistics.fmean(data)),
            "median": r(statistics.median(data)),
            "modes": sorted(k for k, c in counts.items() if c == top) if top > 1 else [],
            "min": ordered[0], "max": ordered[-1], "range": r(ordered[-1] - ordered[0]),
            "variance": r(var), "std_dev": r(math.sqrt(var)), "kind": "sample" if sample else "population",
            "percentiles": {f"p{p:g}": r(_percentile(ordered, p)) for p in pcts}}


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_FUNCS = {"sqrt": math.sqrt, "exp": math.exp, "ln": math.log, "log": math.log, "log10": math.log10, "log2": math.log2,
          "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil, "min": min, "max": max,
          "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
          "factorial": math.factorial, "hypot": math.hypot}
_TRIG = {"sin", "cos", "tan"}
_INVERSE = {"asin", "acos", "atan"}


def _eval(node: ast.AST, env: dict[str, float], degrees: bool) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body, env, degrees)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        raise ValueError(f"unknown name {node.id!r}; pass it in `variables` (known constants: pi, e, tau)")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval(node.operand, env, degrees)
        return v if isinstance(node.op, ast.UAdd) else -v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval(node.left, env, degrees), _eval(node.right, env, degrees)
        if isinstance(node.op, ast.Pow) and (abs(b) > 1000 or (abs(a) > 1e6 and abs(b) > 50)):
            raise ValueError("exponent too large")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise ValueError("division by zero")
        out = _BINOPS[type(node.op)](a, b)
        if isinstance(out, complex):
            raise ValueError(f"{ast.unparse(node)!r} has no real value")
        if isinstance(out, int) and out.bit_length() > 4096:
            raise ValueError("the result is too large")
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        name = node.func.id
        args = [_eval(a, env, degrees) for a in node.args]
        if name in _TRIG and degrees:
            args = [math.radians(a) for a in args]
        if name == "factorial" and (len(args) != 1 or args[0] != int(args[0]) or not 0 <= args[0] <= 170):
            raise ValueError("factorial takes one whole number between 0 and 170")
        try:
            out = _FUNCS[name](*(int(a) for a in args) if name == "factorial" else args)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}({', '.join(f'{a:g}' for a in args)}): {exc}") from None
        return math.degrees(out) if name in _INVERSE and degrees else out
    raise ValueError(f"unsupported syntax in expression: {ast.unparse(node)!r}")


def evaluate_expression(expression: str, variables: dict[str, float] | None = None, angle_unit: str = "radians",
                        decimals: int = 10) -> dict[str, Any]:
    text = req_str("expression", expression)
    if len(text) > 500:
        raise ValueError("`expression` is limited to 500 characters")
    env = {"pi": math.pi, "e": math.e, "tau": math.tau}
    for k, v in req_obj("variables", variables or {}).items():
        if not k.isidentifier() or k in _FUNCS:
            raise ValueError(f"invalid variable name {k!r}")
        env[k] = req_num(f"variables.{k}", v)
    degrees = req_choice("angle_unit", angle_unit, ["radians", "degrees"]) == "degrees"
    decimals = req_int("decimals", decimals, 0, 15)
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse expression: {exc.msg}") from None
    try:
        result = _eval(tree, env, degrees)
    except (OverflowError, RecursionError):
        raise ValueError("the result is too large") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise ValueError("the expression has no finite real value")
    return {"expression": text, "result": round(result, decimals) if isinstance(result, float) else result,
            "angle_unit": "degrees" if degrees else "radians"}


def fit_linear_regression(x: list[float], y: list[float], predict_at: list[float] | None = None) -> dict[str, Any]:
    xs, ys = _numbers("x", x, 2), _numbers("y", y, 2)
    if len(xs) != len(ys):
        raise ValueError(f"`x` and `y` must have the same length ({len(xs)} != {len(ys)})")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = math.fsum((a - mx) ** 2 for a in xs)
    if sxx == 0:
        raise ValueError("all `x` values are equal; the slope is undefined")
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(xs, ys))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = math.fsum((b - my) ** 2 for b in ys)
    ss_res = math.fsum((b - (intercept + slope * a)) ** 2 for a, b in zip(xs, ys))
    out: dict[str, Any] = {"slope": round(slope, 6), "intercept": round(intercept, 6),
                           "r_squared": round(1 - ss_res / ss_tot, 6) if ss_tot else 1.0, "n": len(xs),
                           "equation": f"y = {slope:.4g}x {'+' if intercept >= 0 else '-'} {abs(intercept):.4g}"}
    if predict_at is not None:
        out["predictions"] = [{"x": v, "y": round(intercept + slope * v, 6)}
                              for v in _numbers("predict_at", predict_at)]
    return out


def solve_quadratic(a: float, b: float, c: float) -> dict[str, Any]:
    a, b, c = (req_num(k, v, -1e100, 1e100) for k, v in (("a", a), ("b", b), ("c", c)))
    if a == 0:
        if b == 0:
            raise ValueError("`a` and `b` are both 0: not an equation in x")
        root = -c / b
        if not math.isfinite(root):
            raise ValueError("the coefficients are too extreme to solve in floating point")
        return {"kind": "linear", "roots": [{"real": round(root, 10), "imag": 0.0}]}
    disc = b * b - 4 * a * c
    vertex = {"x": round(-b / (2 * a), 10), "y": round(c - b * b / (4 * a), 10)}
    if disc >= 0:
        r = math.sqrt(disc)
        roots = sorted({round((-b - r) / (2 * a), 10), round((-b + r) / (2 * a), 10)})
        out = [{"real": v, "imag": 0.0} for v in roots]
    else:
        re_, im = round(-b / (2 * a), 10), round(math.sqrt(-disc) / (2 * abs(a)), 10)
        out = [{"real": re_, "imag": -im}, {"real": re_, "imag": im}]
    values = [disc, vertex["x"], vertex["y"], *(r["real"] for r in out), *(r["imag"] for r in out)]
    if not all(math.isfinite(v) for v in values):
        raise ValueError("the coefficients are too extreme to solve in floating point")
    return {"kind": "quadratic", "discriminant": disc, "roots": out,
            "root_type": "two real" if disc > 0 else "one repeated real" if disc == 0 else "two complex",
            "vertex": vertex}


def percent_change(old_value: float, new_value: float, decimals: int = 2) -> dict[str, Any]:
    old, new = req_num("old_value", old_value, -1e100, 1e100), req_num("new_value", new_value, -1e100, 1e100)
    decimals = req_int("decimals", decimals, 0, 10)
    if old == 0:
        raise ValueError("`old_value` is 0; percent change is undefined")
    pct = (new - old) / abs(old) * 100
    if not math.isfinite(pct):
        raise ValueError("`old_value` is too close to 0; percent change is out of range")
    return {"old_value": old, "new_value": new, "difference": round(new - old, decimals),
            "percent_change": round(pct, decimals),
            "direction": "increase" if pct > 0 else "decrease" if pct < 0 else "none"}


def prime_factorize(n: int) -> dict[str, Any]:
    n = req_int("n", n, 2, 10**12)
    factors, rest, p = {}, n, 2
    while p * p <= rest:
        while rest % p == 0:
            factors[p] = factors.get(p, 0) + 1
            rest //= p
        p += 1 if p == 2 else 2
    if rest > 1:
        factors[rest] = factors.get(rest, 0) + 1
    divisors = math.prod(e + 1 for e in factors.values())
    return {"n": n, "is_prime": factors == {n: 1}, "factors": [{"prime": k, "exponent": v} for k, v in factors.items()],
            "factorization": " × ".join(f"{k}^{v}" if v > 1 else str(k) for k, v in factors.items()),
            "number_of_divisors": divisors}


def gcd_lcm(numbers: list[int]) -> dict[str, Any]:
    nums = [req_int(f"numbers[{i}]", v, 1, 10**15) for i, v in enumerate(req_list("numbers", numbers, 2, 50))]
    return {"numbers": nums, "gcd": math.gcd(*nums), "lcm": math.lcm(*nums), "coprime": math.gcd(*nums) == 1}


# --------------------------------------------------------------------------- schemas

_NUMS = array(number("A value."), "Numeric values.", minItems=1)

SPECS = [
    spec("math", "mathstats:calculate_statistics",
         "Descriptive statistics of a list of numbers: count, sum, mean, median, modes, min, max, range, "
         "variance, standard deviation and percentiles.",
         {"values": _NUMS, "percentiles": array(number("Percentile 0-100.", minimum=0, maximum=100),
                                                "Percentiles to report (default 25, 50, 75).", maxItems=20),
          "sample": boolean("Sample (n-1) rather than population statistics.", True),
          "decimals": integer("Decimal places of results (0-10).", 4, minimum=0, maximum=10)},
         ["values"],
         [{"values": [12, 15, 11, 19, 15, 22]}, {"values": [3.5, 7.25, 1, 9], "percentiles": [10, 90], "sample": False,
                                                 "decimals": 2}],
         query="Give me the summary statistics of {values}[, with percentiles {percentiles}]"
               "[ (sample statistics: {sample})][, rounded to {decimals} decimals]."),
    spec("math", "mathstats:evaluate_expression",
         "Evaluate an arithmetic expression safely, with + - * / // % ** (or ^), parentheses, pi, e, "
         "functions (sqrt, exp, ln, log10, sin, cos, tan, asin, round, min, max, factorial, ...) and variables.",
         {"expression": string("The expression, e.g. '(3 + 4) * sqrt(x)'."),
          "variables": {"type": "object", "description": "Values of variables used in the expression, e.g. {\"x\": 2}.",
                        "additionalProperties": {"type": "number"}},
          "angle_unit": enum(["radians", "degrees"], "Angle unit of trigonometric functions.", "radians"),
          "decimals": integer("Decimal places of the result (0-15).", 10, minimum=0, maximum=15)},
         ["expression"],
         [{"expression": "(3 + 4) * 2 ^ 3"}, {"expression": "r^2 * pi", "variables": {"r": 2.5}, "decimals": 3},
          {"expression": "sin(30) + cos(60)", "angle_unit": "degrees"}],
         query="What is {expression}[ with {variables}][ in {angle_unit}][, to {decimals} decimal places]?"),
    spec("math", "mathstats:fit_linear_regression",
         "Fit a least-squares line y = slope*x + intercept to paired data; returns slope, intercept, R² and "
         "optional predictions.",
         {"x": array(number("x value."), "Independent values.", minItems=2),
          "y": array(number("y value."), "Dependent values (same length as x).", minItems=2),
          "predict_at": array(number("x value."), "x values at which to predict y.")},
         ["x", "y"],
         [{"x": [1, 2, 3, 4, 5], "y": [2.1, 3.9, 6.2, 7.8, 10.1]},
          {"x": [2019, 2020, 2021, 2022], "y": [150, 162, 171, 185], "predict_at": [2025]}],
         query="Fit a straight line to x = {x} and y = {y}[ and predict y at x = {predict_at}]."),
    spec("math", "mathstats:solve_quadratic",
         "Solve a*x^2 + b*x + c = 0 (real or complex roots, discriminant, vertex of the parabola).",
         {"a": number("Coefficient of x^2."), "b": number("Coefficient of x."), "c": number("Constant term.")},
         ["a", "b", "c"], [{"a": 1, "b": -3, "c": 2}, {"a": 2, "b": 4, "c": 5}],
         query="Solve the quadratic equation with a = {a}, b = {b} and c = {c}."),
    spec("math", "mathstats:percent_change",
         "Compute the difference and percent change from an old value to a new value.",
         {"old_value": number("Starting value (non-zero)."), "new_value": number("Ending value."),
          "decimals": integer("Decimal places (0-10).", 2, minimum=0, maximum=10)},
         ["old_value", "new_value"],
         [{"old_value": 80, "new_value": 92}, {"old_value": 1450.5, "new_value": 1210, "decimals": 1}],
         query="By what percentage did the value change going from {old_value} to {new_value}"
               "[, to {decimals} decimal places]?"),
    spec("math", "mathstats:prime_factorize",
         "Factorize an integer into primes and count its divisors.",
         {"n": integer("Integer between 2 and 10^12.", minimum=2, maximum=10**12)}, ["n"],
         [{"n": 360}, {"n": 97}, {"n": 600851475143}],
         query="What are the prime factors of {n}?"),
    spec("math", "mathstats:gcd_lcm",
         "Greatest common divisor and least common multiple of positive integers.",
         {"numbers": array(integer("Positive integer.", minimum=1), "Two or more integers.", minItems=2, maxItems=50)},
         ["numbers"], [{"numbers": [12, 18, 30]}, {"numbers": [7, 9]}],
         query="What are the greatest common divisor and the least common multiple of {numbers}?"),
]
