"""The bundled executable tool catalog: size, schemas, examples, determinism, validation
errors, data coherence for chained calls, and data size."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ttpa_ray.toolcall import load_tools
from ttpa_ray.tools.catalog import bundled_catalog
from ttpa_ray.tools.tool import Tool
from ttpa_ray.tools.bundled import CATALOG, call_tool, resolve_impl

BY_NAME = {t.name: t for t in CATALOG}
EXAMPLES = [pytest.param(t, ex, id=f"{t.name}-{i}") for t in CATALOG for i, ex in enumerate(t.examples)]
DATA_DIR = Path(__file__).resolve().parents[1] / "ttpa_ray" / "tools" / "data"


def run(name: str, **kwargs: Any) -> Any:
    return call_tool(BY_NAME[name], kwargs)


# --------------------------------------------------------------------------- (a) size and names


def test_catalog_size_domains_and_names() -> None:
    assert len(CATALOG) >= 32
    domains = Counter(t.domain for t in CATALOG)
    assert len(domains) >= 7
    assert {"weather", "travel", "finance", "calendar", "units", "math", "search"} <= set(domains)
    assert all(n >= 3 for n in domains.values()), domains
    names = [t.name for t in CATALOG]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)+", n) for n in names), names


def test_bundled_catalog_is_the_catalog() -> None:
    tools = bundled_catalog()
    assert [t.name for t in tools] == [t.name for t in CATALOG]
    assert tools == CATALOG and tools is not CATALOG
    assert all(isinstance(t, Tool) and t.executable for t in tools)


# --------------------------------------------------------------------------- (b) schemas


def test_schemas_round_trip_through_load_tools() -> None:
    schemas = load_tools([t.openai() for t in CATALOG])
    assert [s.name for s in schemas] == [t.name for t in CATALOG]
    for s, t in zip(schemas, CATALOG):
        assert s.openai() == t.openai()
        fn = t.openai()["function"]
        assert fn["parameters"]["type"] == "object"
        assert len(fn["description"]) >= 30, t.name
        for pname, spec in fn["parameters"]["properties"].items():
            assert spec.get("description"), f"{t.name}.{pname} has no description"


@pytest.mark.parametrize("tool", CATALOG, ids=lambda t: t.name)
def test_parameter_schemas_are_valid_json_schema(tool: Tool) -> None:
    params = tool.openai()["function"]["parameters"]
    jsonschema.Draft202012Validator.check_schema(params)
    for pname, spec in params["properties"].items():
        if "default" in spec:
            jsonschema.validate(spec["default"], spec)
            assert pname not in params["required"], f"{tool.name}.{pname} is required but has a default"


@pytest.mark.parametrize("tool", CATALOG, ids=lambda t: t.name)
def test_schema_matches_function_signature(tool: Tool) -> None:
    params = tool.openai()["function"]["parameters"]
    sig = inspect.signature(resolve_impl(tool.impl or "")).parameters
    assert set(sig) == set(params["properties"]), tool.name
    for name, p in sig.items():
        if name in params["required"]:
            assert p.default is inspect.Parameter.empty, f"{tool.name}.{name} is required but has a default"
        else:
            assert p.default is not inspect.Parameter.empty, f"{tool.name}.{name} is optional without a default"
            if "default" in params["properties"][name]:
                assert params["properties"][name]["default"] == p.default, f"{tool.name}.{name} default differs"


# --------------------------------------------------------------------------- (c, d) examples


def test_every_tool_has_two_or_three_examples() -> None:
    for t in CATALOG:
        assert 2 <= len(t.examples) <= 3, t.name


@pytest.mark.parametrize(("tool", "example"), EXAMPLES)
def test_example_validates_and_executes_deterministically(tool: Tool, example: dict[str, Any]) -> None:
    jsonschema.validate(example, tool.openai()["function"]["parameters"])
    fn = resolve_impl(tool.impl or "")
    first = fn(**example)
    text = json.dumps(first, allow_nan=False, sort_keys=True)
    assert json.loads(text) == first  # plain JSON types only
    assert isinstance(first, dict) and first
    _scramble(first)  # results must not alias the cached bundled data
    assert json.dumps(fn(**example), allow_nan=False, sort_keys=True) == text


def _scramble(value: Any) -> None:
    children = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
    for child in children:
        _scramble(child)
    if isinstance(value, (dict, list)):
        value.clear()


def _all_outputs_digest() -> str:
    h = hashlib.sha256()
    for t in CATALOG:
        for ex in t.examples:
            h.update(json.dumps(call_tool(t, ex), sort_keys=True).encode())
    return h.hexdigest()


def test_outputs_identical_across_processes_and_hash_seeds() -> None:
    code = "from tests.test_tool_catalog import _all_outputs_digest as d; print(d())"
    root = Path(__file__).resolve().parents[1]
    digests = set()
    for seed in ("1", "987"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                             timeout=120, check=True)
        digests.add(out.stdout.strip())
    assert digests == {_all_outputs_digest()}


# --------------------------------------------------------------------------- (e) schema feature coverage


def _walk(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield spec
    if isinstance(spec.get("items"), dict):
        yield from _walk(spec["items"])
    for sub in (spec.get("properties") or {}).values():
        yield from _walk(sub)


def test_catalog_covers_parameter_kinds() -> None:
    counts: Counter[str] = Counter()
    for t in CATALOG:
        params = t.openai()["function"]["parameters"]
        for pname, top in params["properties"].items():
            counts["required" if pname in params["required"] else "optional"] += 1
            for spec in _walk(top):
                kind = spec.get("type")
                counts[kind] += 1
                if "enum" in spec:
                    counts["enum"] += 1
                if kind == "array":
                    assert isinstance(spec.get("items"), dict) and spec["items"].get("type"), (t.name, pname)
                if kind == "object" and spec.get("properties"):
                    counts["nested_object"] += 1
    for kind in ("required", "optional", "enum", "integer", "number", "boolean", "array", "nested_object", "string"):
        assert counts[kind] >= 3, (kind, counts)


# --------------------------------------------------------------------------- (f) bad input


BAD_CALLS = [
    ("get_current_weather", {"city": "Atlantis"}, "unknown city"),
    ("get_weather_forecast", {"city": "Paris", "days": 0}, "days"),
    ("get_weather_forecast", {"city": "Paris", "units": "kelvin"}, "units"),
    ("get_climate_normals", {"city": "Paris", "months": [13]}, "months"),
    ("compare_city_weather", {"cities": ["Rome"]}, "cities"),
    ("convert_currency", {"amount": 10, "from_currency": "XYZ", "to_currency": "EUR"}, "unknown currency"),
    ("convert_currency", {"amount": -5, "from_currency": "USD", "to_currency": "EUR"}, "amount"),
    ("get_stock_quote", {"symbol": "ZZZZ"}, "unknown stock symbol"),
    ("calculate_loan_payment", {"principal": -1000, "annual_rate_percent": 5, "years": 10}, "principal"),
    ("analyze_portfolio", {"holdings": [{"symbol": "NOVX"}]}, "shares"),
    ("list_events", {"start_date": "2025-06-10", "end_date": "2025-06-01"}, "before"),
    ("days_between_dates", {"start_date": "2025-06-10", "end_date": "2025-06-01"}, "before"),
    ("add_days_to_date", {"date": "2025-02-30", "days": 3}, "YYYY-MM-DD"),
    ("get_public_holidays", {"country": "Switzerland", "year": 2025}, "no holiday data"),
    ("create_event", {"title": "Late", "date": "2025-06-03", "start_time": "23:30", "duration_minutes": 60},
     "same day"),
    ("find_free_slots", {"date": "2025-06-03", "working_hours": {"start": "17:00", "end": "09:00"}}, "working_hours"),
    ("search_hotels", {"city": "Lisbon", "check_in": "2025-06-13", "check_out": "2025-06-10"}, "after"),
    ("book_hotel", {"hotel_id": "HTL-XXX-9", "check_in": "2025-06-10", "check_out": "2025-06-12",
                    "guest": {"full_name": "A B", "email": "a@b.co"}}, "unknown hotel_id"),
    ("book_hotel", {"hotel_id": "HTL-LIS-1", "check_in": "2025-06-10", "check_out": "2025-06-12", "guests": 4,
                    "guest": {"full_name": "A B", "email": "a@b.co"}}, "at most"),
    ("search_flights", {"origin": "London", "destination": "London", "date": "2025-06-10"}, "same city"),
    ("search_flights", {"origin": "London", "destination": "Paris", "date": "2024-01-01"}, "between"),
    ("book_flight", {"flight_id": "ZZ999-20250610", "passengers": [{"first_name": "A", "last_name": "B"}],
                     "contact": {"email": "a@b.co"}}, "unknown flight"),
    ("book_flight", {"flight_id": "not-an-id", "passengers": [{"first_name": "A", "last_name": "B"}],
                     "contact": {"email": "a@b.co"}}, "malformed"),
    ("search_trains", {"origin": "Cairo", "destination": "Paris", "date": "2025-06-10"}, "no rail service"),
    ("convert_units", {"value": 1, "from_unit": "km", "to_unit": "kg"}, "cannot convert"),
    ("convert_units", {"value": 1, "from_unit": "furlong", "to_unit": "m"}, "unknown unit"),
    ("convert_temperature", {"value": -500, "from_scale": "celsius"}, "absolute zero"),
    ("evaluate_expression", {"expression": "__import__('os').system('ls')"}, "unsupported"),
    ("evaluate_expression", {"expression": "1 / 0"}, "division by zero"),
    ("evaluate_expression", {"expression": "9 ** 9 ** 9"}, "too large"),
    ("fit_linear_regression", {"x": [1, 2, 3], "y": [1, 2]}, "same length"),
    ("percent_change", {"old_value": 0, "new_value": 5}, "undefined"),
    ("prime_factorize", {"n": 1}, "between"),
    ("search_articles", {"query": "   "}, "query"),
    ("get_article", {"article_id": "no-such-article"}, "unknown article_id"),
    ("scale_recipe", {"recipe_id": "rcp-pancakes", "servings": 0}, "servings"),
    ("get_recipe", {"recipe_id": "rcp-nothing"}, "unknown recipe_id"),
    ("get_city_info", {"city": 42}, "must be a string"),
    ("get_stock_history", {"symbol": "NOVX", "days": "ten"}, "integer"),
    ("get_current_weather", {}, "missing a required argument"),
    ("get_current_weather", {"city": "Paris", "colour": "red"}, "unexpected keyword"),
]


@pytest.mark.parametrize(("name", "args", "fragment"), BAD_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_bad_input_raises_value_error_with_message(name: str, args: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        call_tool(BY_NAME[name], args)
    assert fragment.lower() in str(info.value).lower()


def test_every_tool_rejects_a_wrong_type_with_value_error() -> None:
    for t in CATALOG:
        example = t.examples[0]
        params = t.openai()["function"]["parameters"]
        target = params["required"][0] if params["required"] else next(iter(example), None)
        if target is None:
            continue
        with pytest.raises(ValueError):
            call_tool(t, {**example, target: {"not": "valid"}})


ODD_VALUES = [None, "", "x", -1, 0, 1.5, True, [], ["x"], [{}], {}, {"a": 1}, "2025-13-01", "25:00", 1e300, -1e-320,
              [1e300, -1e300], [{"symbol": "NOVX", "shares": 1e300}], 10**18, float("nan"), float("inf")]


@pytest.mark.parametrize("tool", CATALOG, ids=lambda t: t.name)
def test_odd_arguments_give_json_or_value_error(tool: Tool) -> None:
    """Whatever a model passes, a tool returns finite JSON or raises ValueError (never another error)."""
    for example in tool.examples:
        for pname in tool.openai()["function"]["parameters"]["properties"]:
            for value in ODD_VALUES:
                try:
                    out = call_tool(tool, {**example, pname: value})
                except ValueError:
                    continue
                json.dumps(out, allow_nan=False)


# --------------------------------------------------------------------------- chaining


def test_flight_search_ids_are_bookable() -> None:
    found = run("search_flights", origin="Sydney", destination="London", date="2025-07-02")
    assert found["results"]
    for option in found["results"][:3]:
        booked = run("book_flight", flight_id=option["flight_id"], contact={"email": "a@b.co"},
                     passengers=[{"first_name": "Ada", "last_name": "Lovelace"}])
        assert booked["status"] == "confirmed"
        assert booked["total_price_usd"] == option["total_price"]
    assert any(o["stops"] == 1 for o in found["results"])


def test_hotel_search_ids_are_bookable_and_prices_agree() -> None:
    found = run("search_hotels", city="Lisbon", check_in="2025-06-10", check_out="2025-06-13")
    first = found["results"][0]
    booked = run("book_hotel", hotel_id=first["hotel_id"], check_in="2025-06-10", check_out="2025-06-13",
                 guest={"full_name": "Ada Lovelace", "email": "ada@example.com"})
    assert booked["total_price_usd"] == pytest.approx(first["total_price"], abs=0.02)


def test_city_country_and_currency_chain() -> None:
    for city in ("Lisbon", "Tokyo", "Cape Town", "Reykjavik", "Buenos Aires"):
        info = run("get_city_info", city=city)
        country = run("get_country_info", country=info["country"])
        assert country["currency"]["code"] == info["currency"]
        assert run("convert_currency", amount=100, from_currency="USD", to_currency=info["currency"])["converted"] > 0
        assert run("convert_currency", amount=100, from_currency="USD",
                   to_currency=info["country"])["to"] == info["currency"]
        assert run("get_current_weather", city=info["city"])["city"] == info["city"]


def test_search_results_open_and_relate() -> None:
    hits = run("search_articles", query="Which city has the tallest building?")["results"]
    assert hits[0]["article_id"] == "city-dubai"
    article = run("get_article", article_id=hits[0]["article_id"])
    assert "Burj Khalifa" in article["text"]
    assert run("find_related_articles", article_id=article["article_id"])["related"]


def test_stock_recipe_and_calendar_chains() -> None:
    sym = run("lookup_stock_symbol", query="harbor")["matches"][0]["symbol"]
    assert run("get_stock_quote", symbol=sym)["price"] > 0
    recipe = run("search_recipes", ingredients=["eggs"])["results"][0]["recipe_id"]
    assert run("scale_recipe", recipe_id=recipe, servings=8)["servings"] == 8
    slot = run("find_free_slots", date="2025-06-03", duration_minutes=60,
               attendees=["priya.nair@example.com"])["free_slots"][0]
    event = run("create_event", title="Sync", date="2025-06-03", start_time=slot["start"], duration_minutes=60,
                attendees=["priya.nair@example.com"])
    assert event["conflicts"] == []


def test_known_values() -> None:
    assert run("get_public_holidays", country="US", year=2025, month=11)["holidays"][-1]["date"] == "2025-11-27"
    assert run("get_public_holidays", country="GB", year=2024)["holidays"][1]["date"] == "2024-03-29"  # Good Friday
    assert run("convert_units", value=1, from_unit="mi", to_unit="km", precision=8)["result"] == 1.609344
    assert run("convert_temperature", value=100, from_scale="celsius", to_scale=["fahrenheit"])["results"] == \
        {"fahrenheit": 212.0}
    assert run("calculate_loan_payment", principal=250000, annual_rate_percent=4.5, years=30)["payment"] == 1266.71
    assert run("days_between_dates", start_date="2025-06-02", end_date="2025-06-09")["business_days"] == 5
    assert run("get_travel_distance", origin="London", destination="Paris")["distance"] == pytest.approx(344, abs=2)


# --------------------------------------------------------------------------- (g) data size


def test_data_folder_is_small_and_valid_json() -> None:
    files = sorted(DATA_DIR.glob("*.json"))
    assert files
    assert sum(f.stat().st_size for f in DATA_DIR.rglob("*") if f.is_file()) < 300 * 1024
    for f in files:
        json.loads(f.read_text(encoding="utf-8"))
    articles = json.loads((DATA_DIR / "articles.json").read_text(encoding="utf-8"))["articles"]
    assert len(articles) >= 35 and len({a["id"] for a in articles}) == len(articles)
