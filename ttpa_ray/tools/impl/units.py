"""Unit conversion tools: linear units in nine categories (``data/units.json``: length, mass,
volume, area, speed, time, data, energy, pressure), temperatures, and unit listings.

Unit names are matched by canonical name or alias, case-insensitively (``'km'``,
``'kilometres'``, ``'Kilometer'``), so ``'Mb'`` means megabyte, not megabit.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ttpa_ray.tools.impl._common import load, norm, req_choice, req_int, req_list, req_num, req_str
from ttpa_ray.tools.impl._schema import array, enum, integer, number, spec, string

SCALES = ["celsius", "fahrenheit", "kelvin"]


@lru_cache(maxsize=None)
def _index() -> dict[str, tuple[str, str, float]]:
    """alias -> (category, canonical unit, factor to the category's base unit)."""
    out: dict[str, tuple[str, str, float]] = {}
    for cat, info in load("units.json")["categories"].items():
        for unit, (factor, aliases) in info["units"].items():
            for key in (unit, unit.replace("_", " "), *aliases):
                out.setdefault(norm(key), (cat, unit, float(factor)))
    return out


def _unit(name: str, value: Any) -> tuple[str, str, float]:
    text = req_str(name, value)
    hit = _index().get(norm(text)) or _index().get(norm(text.rstrip("s")))
    if hit is None:
        raise ValueError(f"unknown unit {text!r} for `{name}`; call list_units to see supported units "
                         f"(temperatures use convert_temperature)")
    return hit


def convert_units(value: float, from_unit: str, to_unit: str, precision: int = 6) -> dict[str, Any]:
    value = req_num("value", value, -1e100, 1e100)
    precision = req_int("precision", precision, 0, 12)
    cat_a, unit_a, fa = _unit("from_unit", from_unit)
    cat_b, unit_b, fb = _unit("to_unit", to_unit)
    if cat_a != cat_b:
        raise ValueError(f"cannot convert {cat_a} ({unit_a}) to {cat_b} ({unit_b})")
    result = value * fa / fb
    return {"value": value, "from_unit": unit_a, "to_unit": unit_b, "category": cat_a,
            "result": float(f"{result:.{precision}g}") if result else 0.0,
            "factor": float(f"{fa / fb:.10g}")}


def _scale(name: str, value: Any) -> str:
    text = norm(req_str(name, value))
    for scale, aliases in load("units.json")["temperature"].items():
        if text == scale or text in aliases:
            return scale
    raise ValueError(f"`{name}` must be one of {SCALES} (or C, F, K), got {value!r}")


def convert_temperature(value: float, from_scale: str, to_scale: list[str] | str | None = None) -> dict[str, Any]:
    value = req_num("value", value)
    src = _scale("from_scale", from_scale)
    wanted = ["celsius"] if to_scale is None else to_scale if isinstance(to_scale, list) else [to_scale]
    targets = [_scale("to_scale[]", t) for t in req_list("to_scale", wanted, 1, 3)]
    kelvin = {"celsius": value + 273.15, "fahrenheit": (value - 32) * 5 / 9 + 273.15, "kelvin": value}[src]
    if kelvin < 0:
        raise ValueError(f"{value} {src} is below absolute zero")
    conv = {"celsius": kelvin - 273.15, "fahrenheit": (kelvin - 273.15) * 9 / 5 + 32, "kelvin": kelvin}
    return {"value": value, "from_scale": src, "results": {t: round(conv[t], 4) for t in targets}}


def list_units(category: str | None = None) -> dict[str, Any]:
    cats = load("units.json")["categories"]
    names = [*cats, "temperature"]
    chosen = names if category is None else [req_choice("category", category, names)]
    out = {}
    for c in chosen:
        if c == "temperature":
            scales = load("units.json")["temperature"]
            out[c] = {"base_unit": "kelvin", "units": {s: list(a) for s, a in scales.items()},
                      "tool": "convert_temperature"}
        else:
            out[c] = {"base_unit": cats[c]["base"],
                      "units": {u: list(aliases) for u, (_, aliases) in cats[c]["units"].items()},
                      "tool": "convert_units"}
    return {"categories": out}


# --------------------------------------------------------------------------- schemas

CATEGORIES = ["length", "mass", "volume", "area", "speed", "time", "data", "energy", "pressure", "temperature"]

SPECS = [
    spec("units", "units:convert_units",
         "Convert a value between units of length, mass, volume, area, speed, time, data size, energy or "
         "pressure (e.g. miles to km, lb to kg, cups to ml, GB to MiB).",
         {"value": number("The quantity to convert."),
          "from_unit": string("Unit to convert from, name or symbol, e.g. 'mi', 'pound', 'cup'."),
          "to_unit": string("Unit to convert to, e.g. 'km', 'kg', 'ml'."),
          "precision": integer("Significant digits of the result (0-12).", 6, minimum=0, maximum=12)},
         ["value", "from_unit", "to_unit"],
         [{"value": 26.2, "from_unit": "mi", "to_unit": "km"}, {"value": 2, "from_unit": "cups", "to_unit": "ml",
                                                                "precision": 4},
          {"value": 1, "from_unit": "GB", "to_unit": "MiB"}],
         query="Convert {value} {from_unit} to {to_unit}[ with {precision} significant digits]."),
    spec("units", "units:convert_temperature",
         "Convert a temperature between Celsius, Fahrenheit and Kelvin (one or several target scales).",
         {"value": number("Temperature value."), "from_scale": enum(SCALES, "Scale of the value."),
          "to_scale": array(enum(SCALES, "Target scale."), "Target scales (default: celsius).",
                            minItems=1, maxItems=3)},
         ["value", "from_scale"],
         [{"value": 98.6, "from_scale": "fahrenheit", "to_scale": ["celsius", "kelvin"]},
          {"value": 21.5, "from_scale": "celsius", "to_scale": ["fahrenheit"]}],
         query="What is {value} degrees {from_scale}[ in {to_scale}]?"),
    spec("units", "units:list_units",
         "List the supported units (with accepted symbols and aliases) of one category or all categories.",
         {"category": enum(CATEGORIES, "Only this category (default: all).")}, [],
         [{"category": "volume"}, {}],
         query="Which units do you support[ for {category}]?"),
]
