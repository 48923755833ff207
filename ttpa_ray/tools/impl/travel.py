"""Travel tools for places and stays: city and country facts, distances, trip budgets, hotel
search and booking. Flights and trains are in ``transport.py``.

Hotel ids from :func:`search_hotels` (``"HTL-LIS-2"``) are what :func:`book_hotel` takes;
:func:`get_city_info` gives a country and currency code the finance tools understand.
Prices are USD from bundled data, converted with the bundled reference rates on request.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from ttpa_ray.tools.impl._common import (code, currency_code, find_city, find_country, load, req_bool,
                                         req_choice, req_date, req_int, req_list, req_num, req_obj, req_str, rng,
                                         usd_to)
from ttpa_ray.tools.impl._schema import array, boolean, enum, integer, number, obj, spec, string

BOOKING_RANGE = ("2025-06-02", "2026-12-31")
AMENITIES = ["wifi", "breakfast", "pool", "gym", "spa", "parking", "pet_friendly", "airport_shuttle"]
ROOM_TYPES = ["standard", "deluxe", "suite"]


def distance_km(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Great-circle distance between two bundled cities."""
    la1, lo1, la2, lo2 = map(math.radians, (a["lat"], a["lon"], b["lat"], b["lon"]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def get_city_info(city: str, include_nearby: bool = False) -> dict[str, Any]:
    place = find_city(city)
    include_nearby = req_bool("include_nearby", include_nearby)
    out: dict[str, Any] = {
        "city": place["name"], "country": place["country"], "country_code": place["country_code"],
        "currency": place["currency"], "timezone": place["timezone"], "utc_offset_hours": place["utc_offset_hours"],
        "latitude": place["lat"], "longitude": place["lon"], "population_millions": place["population_millions"],
        "airport": place["airport"],
        "hotels_listed": sum(h["city"] == place["name"] for h in load("hotels.json")["hotels"]),
    }
    if include_nearby:
        near = sorted((round(distance_km(place, o)), o["name"]) for o in load("geo.json")["cities"] if o is not place)
        out["nearby_cities"] = [{"city": n, "distance_km": d} for d, n in near if d <= 1500][:6]
    return out


def get_country_info(country: str) -> dict[str, Any]:
    c = find_country(country)
    cur = load("currencies.json")["currencies"][c["currency"]]
    return {"country": c["name"], "code": c["code"], "capital": c["capital"],
            "currency": {"code": c["currency"], "name": cur["name"], "symbol": cur["symbol"]},
            "languages": list(c["languages"]), "calling_code": c["calling_code"], "drives_on": c["drives_on"],
            "cities_in_catalog": [x["name"] for x in load("geo.json")["cities"] if x["country_code"] == c["code"]],
            "holiday_data": bool(c["holidays"])}


def get_travel_distance(origin: str, destination: str, unit: str = "km") -> dict[str, Any]:
    a, b = find_city(origin, "origin"), find_city(destination, "destination")
    unit = req_choice("unit", unit, ["km", "mi"])
    if a is b:
        raise ValueError("`origin` and `destination` are the same city")
    km = distance_km(a, b)
    minutes = int(round((km / 820 * 60 + 35) / 5) * 5)
    return {"origin": a["name"], "destination": b["name"], "unit": unit,
            "distance": round(km if unit == "km" else km / 1.609344, 1),
            "estimated_flight_time": f"{minutes // 60}h {minutes % 60:02d}m",
            "time_difference_hours": b["utc_offset_hours"] - a["utc_offset_hours"]}


_STYLE = {"budget": (0.55, 0.6), "standard": (1.0, 1.0), "luxury": (2.1, 2.2)}  # lodging, daily spend factors


def estimate_trip_budget(city: str, nights: int, travelers: int = 1, style: str = "standard",
                         currency: str = "USD", origin: str | None = None) -> dict[str, Any]:
    place = find_city(city)
    nights = req_int("nights", nights, 1, 60)
    travelers = req_int("travelers", travelers, 1, 12)
    style = req_choice("style", style, list(_STYLE))
    cur = currency_code(currency)
    lodge_f, spend_f = _STYLE[style]
    base = place["hotel_base_usd"]
    parts = {"lodging": base * lodge_f * math.ceil(travelers / 2) * nights,
             "food": base * 0.32 * spend_f * travelers * (nights + 1),
             "local_transport": base * 0.08 * spend_f * travelers * (nights + 1),
             "activities": base * 0.2 * spend_f * travelers * nights}
    if origin is not None:
        start = find_city(origin, "origin")
        if start is place:
            raise ValueError("`origin` must differ from `city`")
        fares = [f[6] for f in load("flights.json")["flights"] if {f[1], f[2]} == {start["airport"], place["airport"]}]
        one_way = min(fares) if fares else 45 + distance_km(start, place) * 0.085
        parts["flights"] = one_way * 2 * travelers * {"budget": 0.9, "standard": 1.0, "luxury": 3.2}[style]
    breakdown = {k: usd_to(v, cur) for k, v in parts.items()}
    total = round(sum(breakdown.values()), 2)
    return {"city": place["name"], "nights": nights, "travelers": travelers, "style": style, "currency": cur,
            "breakdown": breakdown, "total": total, "per_person": round(total / travelers, 2)}


# --------------------------------------------------------------------------- hotels


def _hotel(hotel_id: Any) -> dict[str, Any]:
    text = req_str("hotel_id", hotel_id).upper()
    for h in load("hotels.json")["hotels"]:
        if h["hotel_id"] == text:
            return h
    raise ValueError(f"unknown hotel_id {hotel_id!r}; use an id returned by search_hotels, e.g. 'HTL-LIS-1'")


def _stay(check_in: Any, check_out: Any) -> tuple[dt.date, dt.date]:
    a, b = req_date("check_in", check_in, *BOOKING_RANGE), req_date("check_out", check_out, *BOOKING_RANGE)
    if b <= a:
        raise ValueError(f"`check_out` ({b}) must be after `check_in` ({a})")
    if (b - a).days > 30:
        raise ValueError("stays are limited to 30 nights")
    return a, b


def _nightly(hotel: dict[str, Any], start: dt.date, end: dt.date) -> list[float]:
    city = find_city(hotel["city"])
    warm = max(range(12), key=lambda m: city["climate"]["avg_high_c"][m]) + 1
    out = []
    day = start
    while day < end:
        season = 1 + 0.15 * math.cos(2 * math.pi * (day.month - warm) / 12)
        weekend = 1.15 if day.weekday() in (4, 5) else 1.0
        jitter = rng("hotel", hotel["hotel_id"], day.isoformat()).uniform(0.95, 1.05)
        out.append(hotel["price_per_night_usd"] * season * weekend * jitter)
        day += dt.timedelta(days=1)
    return out


def search_hotels(city: str, check_in: str, check_out: str, guests: int = 2, min_stars: int = 1,
                  max_price_per_night: float | None = None, amenities: list[str] | None = None,
                  sort_by: str = "price", currency: str = "USD") -> dict[str, Any]:
    place = find_city(city)
    start, end = _stay(check_in, check_out)
    guests = req_int("guests", guests, 1, 4)
    min_stars = req_int("min_stars", min_stars, 1, 5)
    cap = None if max_price_per_night is None else req_num("max_price_per_night", max_price_per_night, positive=True)
    want = [req_choice("amenities[]", a, AMENITIES) for a in req_list("amenities", amenities or [], 0, 8)]
    sort_by = req_choice("sort_by", sort_by, ["price", "rating", "stars"])
    cur = currency_code(currency)
    rooms = load("hotels.json")["room_types"]
    room = next(r for r in ROOM_TYPES if rooms[r]["max_guests"] >= guests)
    results = []
    for h in load("hotels.json")["hotels"]:
        if h["city"] != place["name"] or h["stars"] < min_stars or not set(want) <= set(h["amenities"]):
            continue
        total = usd_to(sum(_nightly(h, start, end)) * rooms[room]["multiplier"], cur)
        per_night = round(total / (end - start).days, 2)
        if cap is not None and per_night > cap:
            continue
        results.append({"hotel_id": h["hotel_id"], "name": h["name"], "stars": h["stars"], "rating": h["rating"],
                        "neighborhood": h["neighborhood"], "amenities": list(h["amenities"]), "room_type": room,
                        "price_per_night": per_night, "total_price": total})
    key = {"price": lambda r: (r["total_price"], r["hotel_id"]), "rating": lambda r: (-r["rating"], r["hotel_id"]),
           "stars": lambda r: (-r["stars"], r["total_price"])}[sort_by]
    return {"city": place["name"], "check_in": start.isoformat(), "check_out": end.isoformat(),
            "nights": (end - start).days, "guests": guests, "currency": cur, "results": sorted(results, key=key)}


def book_hotel(hotel_id: str, check_in: str, check_out: str, guest: dict[str, Any], room_type: str = "standard",
               guests: int = 2, special_requests: str = "") -> dict[str, Any]:
    hotel = _hotel(hotel_id)
    start, end = _stay(check_in, check_out)
    room_type = req_choice("room_type", room_type, ROOM_TYPES)
    guests = req_int("guests", guests, 1, 4)
    info = req_obj("guest", guest, ("full_name", "email"))
    name, email = req_str("guest.full_name", info["full_name"]), req_str("guest.email", info["email"])
    if "@" not in email or "." not in email.split("@")[-1]:
        raise ValueError(f"`guest.email` is not a valid email address: {email!r}")
    special_requests = req_str("special_requests", special_requests, allow_empty=True)
    room = load("hotels.json")["room_types"][room_type]
    if guests > room["max_guests"]:
        raise ValueError(f"a {room_type} room holds at most {room['max_guests']} guests; choose a larger room_type")
    total = round(sum(_nightly(hotel, start, end)) * room["multiplier"], 2)
    city = find_city(hotel["city"])
    return {"status": "confirmed",
            "confirmation_code": code("HB", hotel["hotel_id"], start, end, room_type, name.casefold(),
                                      email.casefold()),
            "hotel_id": hotel["hotel_id"], "hotel_name": hotel["name"], "city": hotel["city"], "room_type": room_type,
            "check_in": start.isoformat(), "check_out": end.isoformat(), "nights": (end - start).days,
            "guests": guests, "guest_name": name, "total_price_usd": total,
            "total_price_local": {"currency": city["currency"], "amount": usd_to(total, city["currency"])},
            "free_cancellation_until": (start - dt.timedelta(days=2)).isoformat(),
            "special_requests": special_requests or None}


# --------------------------------------------------------------------------- schemas

_CITY = string("City name, e.g. 'Lisbon' (an airport code such as 'LIS' also works).")
_CUR = string("ISO 4217 currency code for prices, e.g. 'EUR' or 'JPY'.", "USD")
_STAY = "Date YYYY-MM-DD between 2025-06-02 and 2026-12-31."

SPECS = [
    spec("travel", "travel:get_city_info",
         "Get facts about a city: country, ISO country code, local currency code, time zone, coordinates, "
         "population, main airport code and how many hotels are listed.",
         {"city": _CITY, "include_nearby": boolean("Also list other known cities within 1500 km.", False)}, ["city"],
         [{"city": "Lisbon"}, {"city": "Osaka", "include_nearby": True}, {"city": "NYC"}],
         query="Tell me the key facts about {city}[ (nearby cities too: {include_nearby})]."),
    spec("travel", "travel:get_country_info",
         "Get facts about a country: capital, currency (code, name, symbol), languages, calling code, "
         "driving side and the catalog's cities in it.",
         {"country": string("Country name or ISO 3166 alpha-2 code, e.g. 'Japan' or 'JP'.")}, ["country"],
         [{"country": "Japan"}, {"country": "CH"}, {"country": "United Kingdom"}],
         query="What should I know about {country}: its capital, currency and languages?"),
    spec("travel", "travel:get_travel_distance",
         "Get the great-circle distance between two cities, an estimated flight time and the time "
         "difference in hours.",
         {"origin": string("Departure city, e.g. 'London'."), "destination": string("Arrival city, e.g. 'Dubai'."),
          "unit": enum(["km", "mi"], "Distance unit.", "km")}, ["origin", "destination"],
         [{"origin": "London", "destination": "Dubai"},
          {"origin": "Chicago", "destination": "Mexico City", "unit": "mi"}],
         query="How far is it from {origin} to {destination}[ in {unit}], and how long is the flight?"),
    spec("travel", "travel:estimate_trip_budget",
         "Estimate the cost of a trip to a city (lodging, food, local transport, activities, and round-trip "
         "flights when an origin is given) for a number of nights and travelers.",
         {"city": string("Destination city."), "nights": integer("Number of nights (1-60).", minimum=1, maximum=60),
          "travelers": integer("Number of travelers (1-12).", 1, minimum=1, maximum=12),
          "style": enum(list(_STYLE), "Travel style: budget, standard or luxury.", "standard"),
          "currency": _CUR, "origin": string("Home city; adds round-trip economy flights when given.")},
         ["city", "nights"],
         [{"city": "Prague", "nights": 3}, {"city": "Tokyo", "nights": 7, "travelers": 2, "style": "luxury",
                                            "currency": "EUR", "origin": "Paris"}],
         query="How much would {nights} nights in {city} cost[ for {travelers} travelers][ ({style} style)]"
               "[ flying from {origin}][, in {currency}]?"),
    spec("travel", "travel:search_hotels",
         "Search hotels in a city for given dates; returns hotel ids (for book_hotel), stars, rating, "
         "amenities and prices for the stay.",
         {"city": _CITY, "check_in": string("Check-in date. " + _STAY), "check_out": string("Check-out date. " + _STAY),
          "guests": integer("Guests in the room (1-4).", 2, minimum=1, maximum=4),
          "min_stars": integer("Minimum star rating (1-5).", 1, minimum=1, maximum=5),
          "max_price_per_night": number("Maximum price per night, in `currency`."),
          "amenities": array(enum(AMENITIES, "Amenity."), "Amenities the hotel must have."),
          "sort_by": enum(["price", "rating", "stars"], "Sort order of results.", "price"), "currency": _CUR},
         ["city", "check_in", "check_out"],
         [{"city": "Lisbon", "check_in": "2025-06-10", "check_out": "2025-06-13"},
          {"city": "Tokyo", "check_in": "2025-09-01", "check_out": "2025-09-05", "guests": 3, "min_stars": 3,
           "amenities": ["wifi"], "sort_by": "rating", "currency": "JPY"}],
         query="Find me hotels in {city} from {check_in} to {check_out}[ for {guests} guests]"
               "[ with at least {min_stars} stars][ under {max_price_per_night} a night][ with {amenities}]"
               "[, sorted by {sort_by}][, prices in {currency}]."),
    spec("travel", "travel:book_hotel",
         "Book a hotel room using a hotel_id from search_hotels; returns a confirmation code and the total price.",
         {"hotel_id": string("Hotel id from search_hotels, e.g. 'HTL-LIS-1'."),
          "check_in": string("Check-in date. " + _STAY), "check_out": string("Check-out date. " + _STAY),
          "guest": obj({"full_name": string("Lead guest's full name."), "email": string("Contact email."),
                        "phone": string("Contact phone number with country code.")},
                       "Lead guest details.", ["full_name", "email"]),
          "room_type": enum(ROOM_TYPES, "Room type (standard: 2 guests, deluxe: 3, suite: 4).", "standard"),
          "guests": integer("Number of guests (1-4).", 2, minimum=1, maximum=4),
          "special_requests": string("Free-text requests, e.g. 'late arrival'.")},
         ["hotel_id", "check_in", "check_out", "guest"],
         [{"hotel_id": "HTL-LIS-1", "check_in": "2025-06-10", "check_out": "2025-06-13",
           "guest": {"full_name": "Alex Morgan", "email": "alex.morgan@example.com"}},
          {"hotel_id": "HTL-HND-3", "check_in": "2025-09-01", "check_out": "2025-09-05", "room_type": "deluxe",
           "guests": 3, "guest": {"full_name": "Kenji Sato", "email": "kenji@example.com", "phone": "+81 90 1234 5678"},
           "special_requests": "quiet room"}],
         query="Please reserve a room at {hotel_id} from {check_in} to {check_out} for {guest.full_name} ({guest.email}"
               "[, phone {guest.phone}])[, a {room_type} room][ for {guests} guests]"
               "[, special requests: {special_requests}]."),
]
