"""Travel tools for getting around: flight search and booking, train search.

A flight id is ``"<flight number>-<YYYYMMDD>"`` (e.g. ``"AU144-20250610"``); a connecting
itinerary joins its segments with ``+``. :func:`search_flights` returns these ids and
:func:`book_flight` accepts them. Schedules come from ``data/flights.json`` and
``data/trains.json`` (local departure times, ISO weekdays of operation); fares are derived
deterministically from the bundled base fare, the cabin and the date.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Any

from ttpa_ray.tools.impl._common import (code, currency_code, find_city, hhmm, load, req_choice, req_date,
                                         req_int, req_list, req_obj, req_str, req_time, rng, usd_to)
from ttpa_ray.tools.impl._schema import array, enum, integer, obj, spec, string

BOOKING_RANGE = ("2025-06-02", "2026-12-31")
CABINS = {"economy": 1.0, "premium_economy": 1.6, "business": 3.2, "first": 5.5}
MIN_LAYOVER, MAX_LAYOVER = 60, 360
_ID = re.compile(r"^([A-Z]{2}\d{3,4})-(\d{8})$")


@lru_cache(maxsize=None)
def _flights() -> dict[str, dict[str, Any]]:
    data = load("flights.json")
    return {row[0]: dict(zip(data["columns"], row)) for row in data["flights"]}


def _leg(f: dict[str, Any], day: dt.date, cabin: str) -> dict[str, Any]:
    """One flight on one date: local times, arrival day, fare (USD, per passenger)."""
    a, b = find_city(f["origin"]), find_city(f["destination"])
    dep = int(f["depart"][:2]) * 60 + int(f["depart"][3:])
    arr = dep + f["duration_min"] + round((b["utc_offset_hours"] - a["utc_offset_hours"]) * 60)
    arr_day = day + dt.timedelta(days=arr // 1440)
    demand = 1.25 if (day - dt.date.fromisoformat(BOOKING_RANGE[0])).days < 14 else 1.0
    demand *= 1.1 if day.weekday() in (4, 6) else 1.0
    fare = f["base_fare_usd"] * CABINS[cabin] * demand * rng("fare", f["flight"], day).uniform(0.9, 1.2)
    return {"flight": f["flight"], "airline": load("flights.json")["airlines"][f["flight"][:2]],
            "from": f["origin"], "to": f["destination"], "from_city": a["name"], "to_city": b["name"],
            "depart": f"{day.isoformat()}T{f['depart']}", "arrive": f"{arr_day.isoformat()}T{hhmm(arr)}",
            "duration_min": f["duration_min"], "_fare": fare, "_arr_day": arr_day, "_arr_min": arr % 1440}


def _operates(f: dict[str, Any], day: dt.date) -> bool:
    return str(day.isoweekday()) in f["days"]


def _itinerary(legs: list[dict[str, Any]], passengers: int, cur: str) -> dict[str, Any]:
    fare = sum(leg["_fare"] for leg in legs) * (0.85 if len(legs) > 1 else 1.0)
    first, last = legs[0], legs[-1]
    a, b = find_city(first["from"]), find_city(last["to"])
    start = dt.datetime.fromisoformat(first["depart"]) - dt.timedelta(hours=a["utc_offset_hours"])
    end = dt.datetime.fromisoformat(last["arrive"]) - dt.timedelta(hours=b["utc_offset_hours"])
    minutes = int((end - start).total_seconds() // 60)
    return {"flight_id": "+".join(f"{leg['flight']}-{leg['depart'][:10].replace('-', '')}" for leg in legs),
            "stops": len(legs) - 1, "total_duration": f"{minutes // 60}h {minutes % 60:02d}m", "_minutes": minutes,
            "segments": [{k: v for k, v in leg.items() if not k.startswith("_")} for leg in legs],
            "price_per_passenger": usd_to(fare, cur), "total_price": usd_to(fare * passengers, cur), "currency": cur}


def _search(o: str, d: str, day: dt.date, cabin: str, max_stops: int) -> list[list[dict[str, Any]]]:
    table = _flights().values()
    found = [[_leg(f, day, cabin)] for f in table if f["origin"] == o and f["destination"] == d and _operates(f, day)]
    if max_stops >= 1:
        for f1 in table:
            if f1["origin"] != o or f1["destination"] == d or not _operates(f1, day):
                continue
            first = _leg(f1, day, cabin)
            for f2 in table:
                if f2["origin"] != f1["destination"] or f2["destination"] != d or not _operates(f2, first["_arr_day"]):
                    continue
                wait = int(f2["depart"][:2]) * 60 + int(f2["depart"][3:]) - first["_arr_min"]
                if MIN_LAYOVER <= wait <= MAX_LAYOVER:
                    found.append([first, _leg(f2, first["_arr_day"], cabin)])
    return found


def search_flights(origin: str, destination: str, date: str, passengers: int = 1, cabin: str = "economy",
                   max_stops: int = 1, departure_window: dict[str, str] | None = None, sort_by: str = "price",
                   currency: str = "USD") -> dict[str, Any]:
    a, b = find_city(origin, "origin"), find_city(destination, "destination")
    if a is b:
        raise ValueError("`origin` and `destination` are the same city")
    day = req_date("date", date, *BOOKING_RANGE)
    passengers = req_int("passengers", passengers, 1, 9)
    cabin = req_choice("cabin", cabin, list(CABINS))
    max_stops = req_int("max_stops", max_stops, 0, 1)
    sort_by = req_choice("sort_by", sort_by, ["price", "duration", "departure"])
    cur = currency_code(currency)
    lo, hi = 0, 24 * 60 - 1
    if departure_window is not None:
        window = req_obj("departure_window", departure_window)
        lo = req_time("departure_window.earliest", window.get("earliest", "00:00"))
        hi = req_time("departure_window.latest", window.get("latest", "23:59"))
        if hi < lo:
            raise ValueError("`departure_window.latest` is before `departure_window.earliest`")
    options = [_itinerary(legs, passengers, cur) for legs in _search(a["airport"], b["airport"], day, cabin, max_stops)
               if lo <= req_time("depart", legs[0]["depart"][11:]) <= hi]
    key = {"price": lambda x: (x["total_price"], x["_minutes"]),
           "duration": lambda x: (x["_minutes"], x["total_price"]),
           "departure": lambda x: (x["segments"][0]["depart"], x["total_price"])}[sort_by]
    options.sort(key=lambda x: (*key(x), x["flight_id"]))
    for x in options:
        del x["_minutes"]
    return {"origin": a["name"], "destination": b["name"], "date": day.isoformat(), "cabin": cabin,
            "passengers": passengers, "results": options[:10], "total_found": len(options),
            "note": "Times are local. Book with book_flight(flight_id=...)." if options else
                    "No flights on this date; try another date, max_stops=1, or search_trains."}


def _parse_id(flight_id: str) -> list[tuple[dict[str, Any], dt.date]]:
    parts = req_str("flight_id", flight_id).upper().replace(" ", "").split("+")
    if len(parts) > 2:
        raise ValueError("`flight_id` has more than two segments; use an id returned by search_flights")
    out = []
    for part in parts:
        m = _ID.match(part)
        if not m:
            raise ValueError(f"malformed flight id {part!r}: expected e.g. 'AU144-20250610' (from search_flights)")
        f = _flights().get(m.group(1))
        if f is None:
            raise ValueError(f"unknown flight number {m.group(1)!r}")
        try:
            day = dt.datetime.strptime(m.group(2), "%Y%m%d").date()
        except ValueError:
            raise ValueError(f"invalid date in flight id {part!r}") from None
        req_date("flight_id date", day.isoformat(), *BOOKING_RANGE)
        if not _operates(f, day):
            raise ValueError(f"flight {f['flight']} does not operate on {day} ({day.strftime('%A')})")
        out.append((f, day))
    return out


def book_flight(flight_id: str, passengers: list[dict[str, Any]], contact: dict[str, Any], cabin: str = "economy",
                seat_preference: str = "no_preference", checked_bags: int = 0) -> dict[str, Any]:
    segs = _parse_id(flight_id)
    cabin = req_choice("cabin", cabin, list(CABINS))
    seat_preference = req_choice("seat_preference", seat_preference, ["window", "aisle", "no_preference"])
    checked_bags = req_int("checked_bags", checked_bags, 0, 3)
    people = []
    for i, p in enumerate(req_list("passengers", passengers, 1, 9)):
        p = req_obj(f"passengers[{i}]", p, ("first_name", "last_name"))
        people.append(f"{req_str(f'passengers[{i}].first_name', p['first_name'])} "
                      f"{req_str(f'passengers[{i}].last_name', p['last_name'])}")
    info = req_obj("contact", contact, ("email",))
    email = req_str("contact.email", info["email"])
    if "@" not in email:
        raise ValueError(f"`contact.email` is not a valid email address: {email!r}")
    legs = [_leg(f, day, cabin) for f, day in segs]
    if len(legs) == 2:
        first, second = legs
        gap = dt.datetime.fromisoformat(second["depart"]) - dt.datetime.fromisoformat(first["arrive"])
        wait = gap.total_seconds() / 60
        if first["to"] != second["from"] or not MIN_LAYOVER <= wait <= MAX_LAYOVER:
            raise ValueError("the two segments of `flight_id` do not form a valid connection")
    itinerary = _itinerary(legs, len(people), "USD")
    letters = {"window": "AF", "aisle": "CD", "no_preference": "ABCDEF"}[seat_preference]
    seats = []
    for leg in legs:
        r = rng("seat", leg["flight"], leg["depart"], cabin, *people)
        row = r.randint(1, 8) if cabin in ("business", "first") else r.randint(10, 40)
        seats.append({"flight": leg["flight"], "seats": [f"{row + i // len(letters)}{letters[i % len(letters)]}"
                                                          for i in range(len(people))]})
    bags = 35.0 * checked_bags * len(people) * len(legs) if cabin in ("economy", "premium_economy") else 0.0
    total = round(itinerary["total_price"] + bags, 2)
    return {"status": "confirmed", "booking_reference": code("FB", itinerary["flight_id"], cabin, *people, length=6),
            "flight_id": itinerary["flight_id"], "cabin": cabin, "passengers": people,
            "segments": itinerary["segments"], "seat_assignments": seats, "checked_bags_per_passenger": checked_bags,
            "baggage_fees_usd": bags, "total_price_usd": total, "contact_email": email}


# --------------------------------------------------------------------------- trains


def search_trains(origin: str, destination: str, date: str, travel_class: str = "second", passengers: int = 1,
                  earliest_departure: str = "00:00", currency: str = "USD") -> dict[str, Any]:
    a, b = find_city(origin, "origin"), find_city(destination, "destination")
    day = req_date("date", date, *BOOKING_RANGE)
    data = load("trains.json")
    travel_class = req_choice("travel_class", travel_class, list(data["class_multipliers"]))
    passengers = req_int("passengers", passengers, 1, 9)
    earliest = req_time("earliest_departure", earliest_departure)
    cur = currency_code(currency)
    rows = [dict(zip(data["columns"], r)) for r in data["trains"]]
    served = sorted({r["origin"] for r in rows})
    if a["name"] not in served or b["name"] not in served:
        raise ValueError(f"no rail service data for {a['name'] if a['name'] not in served else b['name']}; "
                         f"cities with trains: {', '.join(served)}")
    out = []
    for t in rows:
        if t["origin"] != a["name"] or t["destination"] != b["name"] or str(day.isoweekday()) not in t["days"]:
            continue
        dep = req_time("depart", t["depart"])
        if dep < earliest:
            continue
        arr = dep + t["duration_min"] + round((b["utc_offset_hours"] - a["utc_offset_hours"]) * 60)
        fare = (t["base_fare_usd"] * data["class_multipliers"][travel_class]
                * rng("train", t["train"], day).uniform(0.85, 1.3))
        out.append({"train_id": f"{t['train']}-{day.strftime('%Y%m%d')}", "operator": data["operators"][t["train"][:2]],
                    "depart": f"{day.isoformat()}T{t['depart']}",
                    "arrive": f"{(day + dt.timedelta(days=arr // 1440)).isoformat()}T{hhmm(arr)}",
                    "duration_min": t["duration_min"], "class": travel_class,
                    "price_per_passenger": usd_to(fare, cur), "total_price": usd_to(fare * passengers, cur)})
    out.sort(key=lambda x: x["depart"])
    return {"origin": a["name"], "destination": b["name"], "date": day.isoformat(), "currency": cur,
            "results": out, "note": "" if out else "No direct train between these cities on this date."}


# --------------------------------------------------------------------------- schemas

_DATE = "Travel date YYYY-MM-DD between 2025-06-02 and 2026-12-31."
_CUR = string("ISO 4217 currency code for prices, e.g. 'EUR'.", "USD")

SPECS = [
    spec("travel", "transport:search_flights",
         "Search flights between two cities on a date (direct and one-stop). Returns flight ids for "
         "book_flight, segments with local times, durations and prices.",
         {"origin": string("Departure city or airport code, e.g. 'London' or 'LHR'."),
          "destination": string("Arrival city or airport code, e.g. 'Lisbon' or 'LIS'."),
          "date": string(_DATE), "passengers": integer("Number of passengers (1-9).", 1, minimum=1, maximum=9),
          "cabin": enum(list(CABINS), "Cabin class.", "economy"),
          "max_stops": integer("Maximum number of stops (0 = direct only, 1 = allow one connection).", 1,
                               minimum=0, maximum=1),
          "departure_window": obj({"earliest": string("Earliest local departure time HH:MM."),
                                   "latest": string("Latest local departure time HH:MM.")},
                                  "Only flights departing within this local time window."),
          "sort_by": enum(["price", "duration", "departure"], "Sort order of results.", "price"), "currency": _CUR},
         ["origin", "destination", "date"],
         [{"origin": "London", "destination": "Lisbon", "date": "2025-06-10"},
          {"origin": "Sydney", "destination": "London", "date": "2025-07-02", "cabin": "business", "passengers": 2},
          {"origin": "CDG", "destination": "AMS", "date": "2025-09-15", "max_stops": 0,
           "departure_window": {"earliest": "15:00", "latest": "22:00"}, "sort_by": "departure", "currency": "EUR"}],
         query="Find flights from {origin} to {destination} on {date}[ for {passengers} passengers]"
               "[ in {cabin} class][ with at most {max_stops} stops]"
               "[ leaving between {departure_window.earliest} and {departure_window.latest}]"
               "[, sorted by {sort_by}][, prices in {currency}]."),
    spec("travel", "transport:book_flight",
         "Book a flight itinerary by its flight_id from search_flights for one or more passengers; returns "
         "a booking reference, seat assignments and the total price.",
         {"flight_id": string("Itinerary id from search_flights, e.g. 'AU144-20250610' (connections look like "
                              "'LT512-20250701+AU220-20250701')."),
          "passengers": array(obj({"first_name": string("Given name."), "last_name": string("Family name."),
                                   "date_of_birth": string("Date of birth YYYY-MM-DD.")},
                                  "A passenger.", ["first_name", "last_name"]),
                              "Passengers (1-9), as on their passports.", minItems=1, maxItems=9),
          "contact": obj({"email": string("Email for the e-ticket."), "phone": string("Phone number.")},
                         "Booking contact.", ["email"]),
          "cabin": enum(list(CABINS), "Cabin class.", "economy"),
          "seat_preference": enum(["window", "aisle", "no_preference"], "Seat preference.", "no_preference"),
          "checked_bags": integer("Checked bags per passenger (0-3); USD 35 per bag per flight in economy.", 0,
                                  minimum=0, maximum=3)},
         ["flight_id", "passengers", "contact"],
         [{"flight_id": "AU144-20250610", "passengers": [{"first_name": "Alex", "last_name": "Morgan"}],
           "contact": {"email": "alex.morgan@example.com"}},
          {"flight_id": "AU837-20250912", "cabin": "business", "seat_preference": "window", "checked_bags": 1,
           "passengers": [{"first_name": "Ana", "last_name": "Silva", "date_of_birth": "1990-04-02"},
                          {"first_name": "Rui", "last_name": "Silva"}],
           "contact": {"email": "ana.silva@example.com", "phone": "+351 912 345 678"}}],
         query="Please reserve itinerary {flight_id} for {passengers}, e-ticket to {contact.email}"
               "[ (phone {contact.phone})][, {cabin} class][, seat preference {seat_preference}]"
               "[, {checked_bags} checked bags each]."),
    spec("travel", "transport:search_trains",
         "Search direct trains between two cities on a date (Europe, Japan, China); returns train ids, "
         "local times, durations and fares.",
         {"origin": string("Departure city, e.g. 'Paris'."), "destination": string("Arrival city, e.g. 'Amsterdam'."),
          "date": string(_DATE), "travel_class": enum(["second", "first"], "Class of travel.", "second"),
          "passengers": integer("Number of passengers (1-9).", 1, minimum=1, maximum=9),
          "earliest_departure": string("Only trains leaving at or after this local time HH:MM.", "00:00"),
          "currency": _CUR},
         ["origin", "destination", "date"],
         [{"origin": "London", "destination": "Paris", "date": "2025-06-20"},
          {"origin": "Tokyo", "destination": "Osaka", "date": "2025-10-03", "travel_class": "first", "passengers": 2,
           "earliest_departure": "10:00", "currency": "JPY"}],
         query="Are there trains from {origin} to {destination} on {date}[ in {travel_class} class]"
               "[ for {passengers} passengers][ leaving after {earliest_departure}][, fares in {currency}]?"),
]
