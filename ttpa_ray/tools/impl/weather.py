"""Weather tools: current conditions, forecasts, climate normals, comparisons, air quality.

Daily weather is simulated deterministically from each city's bundled monthly climate
normals, seeded by (city, date): the same city and date always give the same weather, and
"current" conditions are those of the catalog's reference date (``as_of`` in geo.json).
"""

from __future__ import annotations

import calendar as _cal
import datetime as dt
import math
from typing import Any

from ttpa_ray.tools.impl._common import (find_city, load, req_bool, req_choice, req_date, req_int, req_list,
                                         rng)
from ttpa_ray.tools.impl._schema import array, boolean, enum, integer, spec, string

UNITS = ["metric", "imperial"]
DATE_RANGE = ("2025-01-01", "2026-12-31")
_COMPASS = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]


def _as_of() -> dt.date:
    return dt.date.fromisoformat(load("geo.json")["as_of"])


def _temp(c: float, units: str) -> float:
    return round(c * 9 / 5 + 32, 1) if units == "imperial" else round(c, 1)


def _uv(lat: float, day: dt.date, cloudy: bool) -> int:
    decl = 23.44 * math.sin(2 * math.pi * (day.timetuple().tm_yday - 81) / 365)
    elevation = math.radians(max(0.0, 90 - abs(lat - decl)))
    uv = 11 * math.sin(elevation) ** 2.5
    return int(round(uv * (0.55 if cloudy else 1.0)))


def _day(city: dict[str, Any], day: dt.date) -> dict[str, Any]:
    """Simulated weather (metric) of one city on one day."""
    normals = city["climate"]
    m = day.month - 1
    r = rng("weather", city["name"], day.isoformat())
    month_days = _cal.monthrange(day.year, day.month)[1]
    rainy = r.random() < normals["rainy_days"][m] / month_days
    high = normals["avg_high_c"][m] + r.gauss(0, 2.2) - (1.5 if rainy else 0)
    low = min(high - 2, normals["avg_low_c"][m] + r.gauss(0, 1.8))
    if rainy:
        per_day = normals["precip_mm"][m] / max(1, normals["rainy_days"][m])
        precip = round(per_day * r.uniform(0.3, 1.8), 1)
        kind = "snow" if high < 1.5 else "thunderstorm" if precip > 25 and high > 20 else \
            "rain" if precip > 6 else "light rain"
    else:
        precip = 0.0
        kind = r.choices(["sunny", "partly cloudy", "cloudy"],
                         weights=[100 - normals["humidity_pct"][m], 40, normals["humidity_pct"][m] / 2])[0]
    humidity = max(15, min(98, round(normals["humidity_pct"][m] + r.gauss(0, 6) + (12 if rainy else 0))))
    chance = 100 * normals["rainy_days"][m] / month_days + (35 if rainy else -10)
    return {"date": day.isoformat(), "condition": kind, "high_c": round(high, 1), "low_c": round(low, 1),
            "precip_mm": precip, "chance_of_precip_pct": int(max(0, min(100, chance)) // 5 * 5),
            "humidity_pct": humidity, "wind_kph": round(r.uniform(4, 28), 1), "wind_dir": r.choice(_COMPASS),
            "uv_index": _uv(city["lat"], day, kind not in ("sunny", "partly cloudy"))}


def _hour_temp(low: float, high: float, hour: int) -> float:
    """Diurnal curve: coolest at 05:00, warmest at 15:00."""
    since_min = (hour - 5) % 24
    if since_min <= 10:
        return low + (high - low) * (1 - math.cos(math.pi * since_min / 10)) / 2
    return high - (high - low) * (1 - math.cos(math.pi * (since_min - 10) / 14)) / 2


def _render(d: dict[str, Any], units: str) -> dict[str, Any]:
    out = dict(d)
    out["high"], out["low"] = _temp(out.pop("high_c"), units), _temp(out.pop("low_c"), units)
    precip, wind = out.pop("precip_mm"), out.pop("wind_kph")
    if units == "imperial":
        out["precip_in"], out["wind_mph"] = round(precip / 25.4, 2), round(wind / 1.609344, 1)
    else:
        out["precip_mm"], out["wind_kph"] = precip, wind
    return out


def get_current_weather(city: str, units: str = "metric") -> dict[str, Any]:
    place = find_city(city)
    units = req_choice("units", units, UNITS)
    d = _day(place, _as_of())
    temp = d["low_c"] + 0.8 * (d["high_c"] - d["low_c"])
    feels = temp - 0.1 * d["wind_kph"] if temp < 12 else temp + (d["humidity_pct"] - 50) * 0.06 if temp > 24 else temp
    return {"city": place["name"], "country": place["country"], "observed_at": f"{d['date']}T12:00 local",
            "condition": d["condition"], "temperature": _temp(temp, units), "feels_like": _temp(feels, units),
            "humidity_pct": d["humidity_pct"], "uv_index": d["uv_index"], "wind_dir": d["wind_dir"],
            **({"wind_mph": round(d["wind_kph"] / 1.609344, 1)} if units == "imperial"
               else {"wind_kph": d["wind_kph"]}),
            "units": {"temperature": "°F" if units == "imperial" else "°C"}}


def get_weather_forecast(city: str, days: int = 3, start_date: str | None = None, units: str = "metric",
                         include_hourly: bool = False) -> dict[str, Any]:
    place = find_city(city)
    days = req_int("days", days, 1, 10)
    units = req_choice("units", units, UNITS)
    include_hourly = req_bool("include_hourly", include_hourly)
    start = _as_of() if start_date is None else req_date("start_date", start_date, *DATE_RANGE)
    out = []
    for i in range(days):
        d = _day(place, start + dt.timedelta(days=i))
        row = _render(d, units)
        if include_hourly:
            row["hourly"] = [{"time": f"{h:02d}:00",
                              "temperature": _temp(_hour_temp(d["low_c"], d["high_c"], h), units)}
                             for h in range(0, 24, 3)]
        out.append(row)
    return {"city": place["name"], "country": place["country"], "units": units, "days": out}


def get_climate_normals(city: str, months: list[int] | None = None, units: str = "metric") -> dict[str, Any]:
    place = find_city(city)
    units = req_choice("units", units, UNITS)
    wanted = list(range(1, 13)) if months is None else [req_int("months[]", m, 1, 12)
                                                        for m in req_list("months", months, 1, 12)]
    normals = place["climate"]
    rows = []
    for m in sorted(set(wanted)):
        i = m - 1
        precip = normals["precip_mm"][i]
        rows.append({"month": m, "month_name": _cal.month_name[m], "avg_high": _temp(normals["avg_high_c"][i], units),
                     "avg_low": _temp(normals["avg_low_c"][i], units), "rainy_days": normals["rainy_days"][i],
                     "humidity_pct": normals["humidity_pct"][i],
                     **({"precip_in": round(precip / 25.4, 2)} if units == "imperial" else {"precip_mm": precip})})
    return {"city": place["name"], "hemisphere": "southern" if place["lat"] < 0 else "northern",
            "units": units, "months": rows}


_METRICS = {"temperature": ("high_c", "high"), "humidity": ("humidity_pct", "humidity_pct"),
            "wind": ("wind_kph", "wind"), "precipitation": ("precip_mm", "precip")}


def compare_city_weather(cities: list[str], metric: str = "temperature", date: str | None = None,
                         units: str = "metric") -> dict[str, Any]:
    names = req_list("cities", cities, 2, 8)
    metric = req_choice("metric", metric, list(_METRICS))
    units = req_choice("units", units, UNITS)
    day = _as_of() if date is None else req_date("date", date, *DATE_RANGE)
    places = [find_city(c, "cities[]") for c in names]
    if len({p["name"] for p in places}) != len(places):
        raise ValueError("`cities` must name different cities")
    rows = []
    for p in places:
        d = _render(_day(p, day), units)
        value = {"temperature": d["high"], "humidity": d["humidity_pct"],
                 "wind": d.get("wind_kph", d.get("wind_mph")), "precipitation": d.get("precip_mm", d.get("precip_in"))}
        rows.append({"city": p["name"], metric: value[metric], "condition": d["condition"]})
    rows.sort(key=lambda row: (-row[metric], row["city"]))
    return {"date": day.isoformat(), "metric": metric, "units": units, "ranking": rows,
            "highest": rows[0]["city"], "lowest": rows[-1]["city"]}


_AQI_BANDS = [(50, "good"), (100, "moderate"), (150, "unhealthy for sensitive groups"), (200, "unhealthy"),
              (300, "very unhealthy"), (500, "hazardous")]


def get_air_quality(city: str, date: str | None = None, include_pollutants: bool = True) -> dict[str, Any]:
    place = find_city(city)
    include_pollutants = req_bool("include_pollutants", include_pollutants)
    day = _as_of() if date is None else req_date("date", date, *DATE_RANGE)
    r = rng("aqi", place["name"], day.isoformat())
    rain = _day(place, day)["precip_mm"] > 0
    aqi = max(5, min(450, round(place["aqi_base"] * r.uniform(0.65, 1.45) * (0.7 if rain else 1.0))))
    category = next(label for top, label in _AQI_BANDS if aqi <= top)
    out: dict[str, Any] = {"city": place["name"], "date": day.isoformat(), "aqi": aqi, "scale": "US AQI",
                           "category": category, "dominant_pollutant": "pm2_5" if aqi > 60 else "o3"}
    if include_pollutants:
        out["pollutants_ug_m3"] = {"pm2_5": round(aqi * 0.42 * r.uniform(0.8, 1.1), 1),
                                   "pm10": round(aqi * 0.75 * r.uniform(0.8, 1.2), 1),
                                   "no2": round(aqi * 0.35 * r.uniform(0.6, 1.3), 1),
                                   "o3": round(40 + aqi * 0.3 * r.uniform(0.7, 1.2), 1)}
    out["advice"] = ("Air quality is fine for outdoor activity." if aqi <= 100 else
                     "Sensitive groups should limit long outdoor exertion." if aqi <= 150 else
                     "Everyone should reduce prolonged outdoor exertion.")
    return out


# --------------------------------------------------------------------------- schemas

_CITY = string("City name, e.g. 'Lisbon' or 'New York' (an airport code such as 'LIS' also works).")
_UNITS = enum(UNITS, "metric: °C, km/h, mm; imperial: °F, mph, inches.", "metric")
_DATE_NOTE = "Date YYYY-MM-DD between 2025-01-01 and 2026-12-31; defaults to today (2025-06-02)."

SPECS = [
    spec("weather", "weather:get_current_weather",
         "Get the current weather (temperature, condition, humidity, wind, UV index) for a city.",
         {"city": _CITY, "units": _UNITS}, ["city"],
         [{"city": "Lisbon"}, {"city": "Tokyo", "units": "imperial"}, {"city": "JFK"}],
         query="What's the weather like in {city} right now[, in {units} units]?"),
    spec("weather", "weather:get_weather_forecast",
         "Get a daily weather forecast for a city: high/low temperature, condition, precipitation, "
         "chance of rain, wind and UV index, optionally with 3-hourly temperatures.",
         {"city": _CITY, "days": integer("Number of days to forecast (1-10).", 3, minimum=1, maximum=10),
          "start_date": string("First forecast day. " + _DATE_NOTE),
          "units": _UNITS,
          "include_hourly": boolean("Include 3-hourly temperatures for each day.", False)},
         ["city"],
         [{"city": "Paris", "days": 5}, {"city": "Sydney", "days": 2, "start_date": "2025-12-24", "units": "imperial",
                                         "include_hourly": True}, {"city": "Singapore"}],
         query="What will the weather be like in {city}[ over the next {days} days][ starting {start_date}]"
               "[ in {units} units][ (3-hourly temperatures: {include_hourly})]?"),
    spec("weather", "weather:get_climate_normals",
         "Get long-term average monthly climate for a city (average high/low, precipitation, rainy days, "
         "humidity) - useful for deciding when to travel.",
         {"city": _CITY, "months": array(integer("Month number 1-12.", minimum=1, maximum=12),
                                         "Months to include (default: all twelve).", minItems=1, maxItems=12),
          "units": _UNITS},
         ["city"],
         [{"city": "Cape Town", "months": [1, 7]}, {"city": "Mumbai"},
          {"city": "Toronto", "months": [12], "units": "imperial"}],
         query="What is the climate usually like in {city}[ for month numbers {months}]"
               "[, in {units} units]?"),
    spec("weather", "weather:compare_city_weather",
         "Compare the weather of several cities on one day and rank them by a metric (highest first).",
         {"cities": array(string("City name."), "Cities to compare (2-8).", minItems=2, maxItems=8),
          "metric": enum(list(_METRICS), "What to rank by: daytime high temperature, humidity, wind speed "
                                         "or precipitation.", "temperature"),
          "date": string("Day to compare. " + _DATE_NOTE), "units": _UNITS},
         ["cities"],
         [{"cities": ["Madrid", "Berlin", "Rome"]}, {"cities": ["Bangkok", "Dubai"], "metric": "humidity",
                                                     "date": "2025-08-15"}],
         query="Compare the weather in {cities}[ on {date}] and rank them[ by {metric}][, in {units} units]."),
    spec("weather", "weather:get_air_quality",
         "Get the air quality index (US AQI), its health category and pollutant concentrations for a city.",
         {"city": _CITY, "date": string("Day of the reading. " + _DATE_NOTE),
          "include_pollutants": boolean("Include PM2.5, PM10, NO2 and O3 concentrations.", True)},
         ["city"],
         [{"city": "Delhi"}, {"city": "Stockholm", "include_pollutants": False},
          {"city": "Seoul", "date": "2025-03-10"}],
         query="How is the air quality in {city}[ on {date}][ (pollutant levels: {include_pollutants})]?"),
]
