"""Shared helpers of the bundled tool implementations: data loading, argument checks,
argument-seeded randomness and the place lookups several domains share.

Every check raises :class:`ValueError` with a message that names the argument, so a
generator model reading the error can fix its call.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import re
import unicodedata
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=None)
def load(name: str) -> Any:
    """A bundled JSON file of ``ttpa_ray/tools/data`` (parsed once; treat as read-only)."""
    return json.loads(resources.files("ttpa_ray.tools").joinpath("data", name).read_text(encoding="utf-8"))


def norm(text: str) -> str:
    """Case-, accent- and whitespace-insensitive key: ``'  São  Paulo'`` -> ``'sao paulo'``."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.casefold().replace("-", " ").split())


def rng(*parts: Any) -> random.Random:
    """A random generator seeded from the arguments only (stable across processes)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def code(prefix: str, *parts: Any, length: int = 6) -> str:
    """A stable identifier such as a booking reference, derived from the arguments."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest().upper()
    return f"{prefix}-{digest[:length]}"


# --------------------------------------------------------------------------- argument checks


def req_str(name: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"`{name}` must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"`{name}` must not be empty")
    return value.strip()


def req_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"`{name}` must be between {lo} and {hi}, got {value}")
    return value


def req_num(name: str, value: Any, lo: float | None = None, hi: float | None = None,
            positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"`{name}` must be greater than 0, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"`{name}` must be between {lo} and {hi}, got {value}")
    return float(value)


def req_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be true or false, got {value!r}")
    return value


def req_choice(name: str, value: Any, choices: list[Any] | tuple[Any, ...]) -> Any:
    if isinstance(value, str):
        for c in choices:
            if isinstance(c, str) and c.casefold() == value.strip().casefold():
                return c
    elif value in choices and not isinstance(value, bool):
        return value
    raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")


def req_list(name: str, value: Any, lo: int = 0, hi: int = 1000) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"`{name}` must be an array, got {type(value).__name__}")
    if not lo <= len(value) <= hi:
        raise ValueError(f"`{name}` must have between {lo} and {hi} items, got {len(value)}")
    return value


def req_obj(name: str, value: Any, required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"`{name}` must be an object, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f"`{name}` is missing {missing}")
    return value


def req_date(name: str, value: Any, lo: str = "1900-01-01", hi: str = "2100-12-31") -> dt.date:
    text = req_str(name, value)
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"`{name}` must be a date in YYYY-MM-DD form, got {value!r}") from None
    if not dt.date.fromisoformat(lo) <= day <= dt.date.fromisoformat(hi):
        raise ValueError(f"`{name}` must be between {lo} and {hi}, got {text}")
    return day


_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def req_time(name: str, value: Any) -> int:
    """``"HH:MM"`` -> minutes after midnight."""
    m = _HHMM.match(req_str(name, value))
    if not m:
        raise ValueError(f"`{name}` must be a 24-hour time HH:MM, got {value!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


def hhmm(minutes: int) -> str:
    minutes %= 24 * 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# --------------------------------------------------------------------------- places and money


@lru_cache(maxsize=None)
def _city_index() -> dict[str, dict[str, Any]]:
    index: dict[str, dict[str, Any]] = {}
    for city in load("geo.json")["cities"]:
        for key in [city["name"], city["airport"], *city["aliases"]]:
            index[norm(key)] = city
    return index


def find_city(value: Any, name: str = "city") -> dict[str, Any]:
    """A bundled city by name, alias or airport code (``'Lisbon'``, ``'LIS'``, ``'NYC'``)."""
    text = req_str(name, value)
    key = norm(text.split(",")[0])
    city = _city_index().get(key)
    if city is None:
        known = ", ".join(sorted(c["name"] for c in load("geo.json")["cities"]))
        raise ValueError(f"unknown city {text!r} for `{name}`; known cities: {known}")
    return city


@lru_cache(maxsize=None)
def _country_index() -> dict[str, dict[str, Any]]:
    index: dict[str, dict[str, Any]] = {}
    for country in load("geo.json")["countries"]:
        for key in [country["code"], country["name"], *country["aliases"]]:
            index[norm(key)] = country
    return index


def find_country(value: Any, name: str = "country") -> dict[str, Any]:
    """A bundled country by name, alias or ISO 3166 alpha-2 code (``'Japan'``, ``'JP'``)."""
    text = req_str(name, value)
    country = _country_index().get(norm(text))
    if country is None:
        known = ", ".join(sorted(c["name"] for c in load("geo.json")["countries"]))
        raise ValueError(f"unknown country {text!r} for `{name}`; known countries: {known}")
    return country


def currency_code(value: Any, name: str = "currency") -> str:
    """An ISO 4217 code of a bundled currency; a country name maps to its currency."""
    text = req_str(name, value)
    table = load("currencies.json")["currencies"]
    if text.upper() in table:
        return text.upper()
    country = _country_index().get(norm(text))
    if country is not None:
        return str(country["currency"])
    for code_, info in table.items():
        if norm(info["name"]) == norm(text):
            return str(code_)
    raise ValueError(f"unknown currency {text!r} for `{name}`; use an ISO 4217 code such as "
                     f"{', '.join(sorted(table)[:8])} (known: {', '.join(sorted(table))})")


def usd_to(amount_usd: float, currency: str) -> float:
    """Convert a USD amount with the bundled reference rates (rounded to 2 decimals)."""
    return round(amount_usd * load("currencies.json")["currencies"][currency]["per_usd"], 2)
