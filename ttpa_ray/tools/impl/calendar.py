"""Calendar tools: a bundled read-only calendar (``data/calendar.json``, owner Alex Morgan,
June 2025), free-slot search across attendees, event creation (validated and checked for
conflicts; the bundled calendar itself is never modified), date arithmetic and public holidays.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ttpa_ray.tools.impl._common import (code, find_country, hhmm, load, req_bool, req_choice, req_date, req_int,
                                         req_list, req_obj, req_str, req_time)
from ttpa_ray.tools.impl._schema import array, boolean, enum, integer, obj, spec, string

CALENDARS = ["all", "work", "personal"]


def _events(day: dt.date | None = None) -> list[dict[str, Any]]:
    evs = load("calendar.json")["events"]
    return [e for e in evs if day is None or e["date"] == day.isoformat()]


def list_events(start_date: str, end_date: str | None = None, calendar: str = "all",
                include_attendees: bool = True) -> dict[str, Any]:
    start = req_date("start_date", start_date)
    end = start if end_date is None else req_date("end_date", end_date)
    if end < start:
        raise ValueError(f"`end_date` ({end}) is before `start_date` ({start})")
    if (end - start).days > 92:
        raise ValueError("the date range is limited to 92 days")
    calendar = req_choice("calendar", calendar, CALENDARS)
    include_attendees = req_bool("include_attendees", include_attendees)
    people = load("calendar.json")["people"]
    out = []
    for e in _events():
        if start.isoformat() <= e["date"] <= end.isoformat() and calendar in ("all", e["calendar"]):
            row = {k: v for k, v in e.items() if k != "attendees"}
            if include_attendees:
                row["attendees"] = [{"email": a, "name": people.get(a, a)} for a in e["attendees"]]
            out.append(row)
    out.sort(key=lambda e: (e["date"], e["start"]))
    return {"owner": load("calendar.json")["owner"], "timezone": load("calendar.json")["timezone"],
            "start_date": start.isoformat(), "end_date": end.isoformat(), "calendar": calendar,
            "count": len(out), "events": out}


def _busy(day: dt.date, emails: list[str]) -> list[tuple[int, int, str]]:
    data = load("calendar.json")
    owner = data["owner"]
    out = []
    for e in _events(day):
        involved = [owner, *e["attendees"]]
        who = [p for p in emails if p in involved]
        if who:
            out.append((req_time("start", e["start"]), req_time("end", e["end"]), ", ".join(who)))
    for person in emails:
        for d, s, f in data["busy"].get(person, []):
            if d == day.isoformat():
                out.append((req_time("start", s), req_time("end", f), person))
    return sorted(out)


def _people(attendees: list[str] | None) -> list[str]:
    data = load("calendar.json")
    emails = [data["owner"]]
    for i, a in enumerate(req_list("attendees", attendees or [], 0, 20)):
        email = req_str(f"attendees[{i}]", a).lower()
        if "@" not in email:
            raise ValueError(f"`attendees[{i}]` must be an email address, got {a!r}")
        if email not in emails:
            emails.append(email)
    return emails


def find_free_slots(date: str, duration_minutes: int = 30, attendees: list[str] | None = None,
                    working_hours: dict[str, str] | None = None) -> dict[str, Any]:
    day = req_date("date", date)
    duration = req_int("duration_minutes", duration_minutes, 5, 600)
    emails = _people(attendees)
    hours = req_obj("working_hours", working_hours or {})
    lo = req_time("working_hours.start", hours.get("start", "09:00"))
    hi = req_time("working_hours.end", hours.get("end", "17:00"))
    if hi <= lo:
        raise ValueError("`working_hours.end` must be after `working_hours.start`")
    known = set(load("calendar.json")["people"])
    unknown = [e for e in emails if e not in known]
    slots, cursor = [], lo
    for s, f, _ in _busy(day, emails) + [(hi, hi, "")]:
        s, f = max(s, lo), min(f, hi)
        if s - cursor >= duration:
            slots.append({"start": hhmm(cursor), "end": hhmm(s), "minutes": s - cursor})
        cursor = max(cursor, f)
    return {"date": day.isoformat(), "weekday": day.strftime("%A"), "duration_minutes": duration,
            "participants": emails, "free_slots": slots,
            "note": f"No calendar data for {unknown}; they are assumed free." if unknown else
                    ("Weekend day." if day.weekday() >= 5 else "")}


def create_event(title: str, date: str, start_time: str, duration_minutes: int = 60, calendar: str = "work",
                 attendees: list[str] | None = None, location: str = "",
                 reminder: dict[str, Any] | None = None) -> dict[str, Any]:
    title = req_str("title", title)
    day = req_date("date", date, "2025-06-02", "2026-12-31")
    start = req_time("start_time", start_time)
    duration = req_int("duration_minutes", duration_minutes, 5, 720)
    if start + duration > 24 * 60:
        raise ValueError("the event must end on the same day (start_time + duration_minutes <= 24:00)")
    calendar = req_choice("calendar", calendar, CALENDARS[1:])
    emails = _people(attendees)
    location = req_str("location", location, allow_empty=True)
    rem = None
    if reminder is not None:
        r = req_obj("reminder", reminder, ("minutes_before",))
        rem = {"minutes_before": req_int("reminder.minutes_before", r["minutes_before"], 0, 10080),
               "method": req_choice("reminder.method", r.get("method", "popup"), ["popup", "email"])}
    conflicts = [{"with": who, "from": hhmm(s), "to": hhmm(f)} for s, f, who in _busy(day, emails)
                 if s < start + duration and start < f]
    return {"status": "created", "event_id": code("EV", title.casefold(), day, start, duration, *emails, length=8),
            "title": title, "calendar": calendar, "date": day.isoformat(), "start": hhmm(start),
            "end": hhmm(start + duration), "location": location or None, "attendees": emails[1:], "reminder": rem,
            "conflicts": conflicts,
            "warning": "Overlaps existing commitments." if conflicts else None}


# --------------------------------------------------------------------------- date arithmetic


def _holiday_dates(country: dict[str, Any], year: int) -> dict[dt.date, str]:
    a, b = year % 19, year // 100  # anonymous Gregorian algorithm for Easter Sunday
    c, d = year % 100, b // 4
    e, f = b % 4, (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    easter = dt.date(year, (h + l_ - 7 * m + 114) // 31, (h + l_ - 7 * m + 114) % 31 + 1)
    out = {}
    for rule in country["holidays"]:
        if "date" in rule:
            day = dt.date(year, int(rule["date"][:2]), int(rule["date"][3:]))
        elif "easter" in rule:
            day = easter + dt.timedelta(days=rule["easter"])
        elif "before" in rule:  # last given weekday strictly before a date
            day = dt.date(year, int(rule["before"][:2]), int(rule["before"][3:])) - dt.timedelta(days=1)
            while day.weekday() != rule["weekday"]:
                day -= dt.timedelta(days=1)
        else:  # nth weekday of a month (nth = -1: last)
            first = dt.date(year, rule["month"], 1)
            if rule["nth"] > 0:
                day = first + dt.timedelta(days=(rule["weekday"] - first.weekday()) % 7 + 7 * (rule["nth"] - 1))
            else:
                nxt = dt.date(year + rule["month"] // 12, rule["month"] % 12 + 1, 1)
                day = nxt - dt.timedelta(days=(nxt.weekday() - rule["weekday"] - 1) % 7 + 1)
        out[day] = rule["name"]
    return dict(sorted(out.items()))


def get_public_holidays(country: str, year: int, month: int | None = None) -> dict[str, Any]:
    c = find_country(country)
    year = req_int("year", year, 1900, 2100)
    month = None if month is None else req_int("month", month, 1, 12)
    if not c["holidays"]:
        have = sorted(x["name"] for x in load("geo.json")["countries"] if x["holidays"])
        raise ValueError(f"no holiday data for {c['name']}; available: {', '.join(have)}")
    days = [{"date": d.isoformat(), "weekday": d.strftime("%A"), "name": n}
            for d, n in _holiday_dates(c, year).items() if month is None or d.month == month]
    return {"country": c["name"], "year": year, "month": month, "holidays": days,
            "note": "National public holidays by their calendar rules; regional holidays and substitute days are "
                    "not included."}


def _business(day: dt.date, holidays: set[dt.date]) -> bool:
    return day.weekday() < 5 and day not in holidays


def _holidays_for(country: str | None, years: range) -> set[dt.date]:
    if country is None:
        return set()
    c = find_country(country, "holiday_country")
    if not c["holidays"]:
        raise ValueError(f"no holiday data for {c['name']}; omit `holiday_country` to count weekends only")
    return {d for y in years for d in _holiday_dates(c, y)}


def add_days_to_date(date: str, days: int, business_days_only: bool = False,
                     holiday_country: str | None = None) -> dict[str, Any]:
    start = req_date("date", date)
    days = req_int("days", days, -3650, 3650)
    business_days_only = req_bool("business_days_only", business_days_only)
    if not business_days_only:
        result = start + dt.timedelta(days=days)
    else:
        holidays = _holidays_for(holiday_country, range(start.year - 11, start.year + 12))
        result, step, left = start, 1 if days >= 0 else -1, abs(days)
        while left:
            result += dt.timedelta(days=step)
            left -= _business(result, holidays)
    return {"start_date": start.isoformat(), "days": days, "business_days_only": business_days_only,
            "result_date": result.isoformat(), "weekday": result.strftime("%A")}


def days_between_dates(start_date: str, end_date: str, include_end_date: bool = False,
                       holiday_country: str | None = None) -> dict[str, Any]:
    start, end = req_date("start_date", start_date), req_date("end_date", end_date)
    if end < start:
        raise ValueError(f"`end_date` ({end}) is before `start_date` ({start})")
    include_end_date = req_bool("include_end_date", include_end_date)
    holidays = _holidays_for(holiday_country, range(start.year, end.year + 1))
    total = (end - start).days + (1 if include_end_date else 0)
    stop = end + dt.timedelta(days=1) if include_end_date else end
    business = sum(_business(start + dt.timedelta(days=i), holidays) for i in range((stop - start).days))
    return {"start_date": start.isoformat(), "end_date": end.isoformat(), "days": total,
            "weeks": round(total / 7, 2), "business_days": business,
            "holidays_excluded": sorted(d.isoformat() for d in holidays if start <= d < stop and d.weekday() < 5)}


# --------------------------------------------------------------------------- schemas

_EMAILS = array(string("Email address."), "Other participants' email addresses, e.g. 'priya.nair@example.com'.")
_COUNTRY = string("Country (name or ISO code) whose public holidays are also skipped, e.g. 'GB'.")

SPECS = [
    spec("calendar", "calendar:list_events",
         "List the user's calendar events between two dates (the user is Alex Morgan; today is 2025-06-02).",
         {"start_date": string("First day YYYY-MM-DD."),
          "end_date": string("Last day YYYY-MM-DD (default: start_date)."),
          "calendar": enum(CALENDARS, "Which calendar to read.", "all"),
          "include_attendees": boolean("Include attendee names and emails.", True)},
         ["start_date"],
         [{"start_date": "2025-06-02", "end_date": "2025-06-06"}, {"start_date": "2025-06-10", "calendar": "personal",
                                                                   "include_attendees": False}],
         query="What's on my calendar starting {start_date}[ through {end_date}][ in the {calendar} calendar]"
               "[ (attendees shown: {include_attendees})]?"),
    spec("calendar", "calendar:find_free_slots",
         "Find free time slots on a day when the user and the given attendees are all available.",
         {"date": string("Day YYYY-MM-DD."),
          "duration_minutes": integer("Minimum slot length in minutes (5-600).", 30, minimum=5, maximum=600),
          "attendees": _EMAILS,
          "working_hours": obj({"start": string("Start of the day HH:MM.", "09:00"),
                                "end": string("End of the day HH:MM.", "17:00")},
                               "Hours to search within.")},
         ["date"],
         [{"date": "2025-06-03", "duration_minutes": 60, "attendees": ["priya.nair@example.com"]},
          {"date": "2025-06-04", "attendees": ["tom.becker@example.com", "sam.ito@example.com"],
           "working_hours": {"start": "08:00", "end": "18:00"}}],
         query="When am I free on {date}[ for at least {duration_minutes} minutes][ together with {attendees}]"
               "[ between {working_hours.start} and {working_hours.end}]?"),
    spec("calendar", "calendar:create_event",
         "Create a calendar event; returns the event id and any conflicts with existing commitments.",
         {"title": string("Event title."), "date": string("Day YYYY-MM-DD (2025-06-02 to 2026-12-31)."),
          "start_time": string("Start time HH:MM (24-hour)."),
          "duration_minutes": integer("Length in minutes (5-720).", 60, minimum=5, maximum=720),
          "calendar": enum(["work", "personal"], "Calendar to add the event to.", "work"),
          "attendees": _EMAILS, "location": string("Where the event takes place."),
          "reminder": obj({"minutes_before": integer("Minutes before the start.", minimum=0, maximum=10080),
                           "method": enum(["popup", "email"], "How to remind.", "popup")},
                          "Reminder settings.", ["minutes_before"])},
         ["title", "date", "start_time"],
         [{"title": "Project kickoff", "date": "2025-06-03", "start_time": "10:00", "duration_minutes": 45,
           "attendees": ["priya.nair@example.com"], "reminder": {"minutes_before": 15}},
          {"title": "Gym", "date": "2025-06-07", "start_time": "08:00", "calendar": "personal",
           "location": "City Gym", "reminder": {"minutes_before": 30, "method": "email"}}],
         query="Put '{title}' on my calendar on {date} at {start_time}[ for {duration_minutes} minutes]"
               "[ in the {calendar} calendar][ with {attendees}][ at {location}]"
               "[, reminding me {reminder.minutes_before} minutes before][ by {reminder.method}]."),
    spec("calendar", "calendar:add_days_to_date",
         "Add (or subtract) a number of calendar days or business days to a date.",
         {"date": string("Start date YYYY-MM-DD."), "days": integer("Days to add; negative to go back."),
          "business_days_only": boolean("Count only weekdays (and skip holidays of holiday_country).", False),
          "holiday_country": _COUNTRY},
         ["date", "days"],
         [{"date": "2025-06-02", "days": 30}, {"date": "2025-12-19", "days": 5, "business_days_only": True,
                                               "holiday_country": "GB"}],
         query="What date is {days} days after {date}[ (business days only: {business_days_only})]"
               "[, skipping {holiday_country} holidays]?"),
    spec("calendar", "calendar:days_between_dates",
         "Count the days, weeks and business days between two dates.",
         {"start_date": string("Start date YYYY-MM-DD."), "end_date": string("End date YYYY-MM-DD (not before start)."),
          "include_end_date": boolean("Count the end date itself.", False), "holiday_country": _COUNTRY},
         ["start_date", "end_date"],
         [{"start_date": "2025-06-02", "end_date": "2025-12-25"},
          {"start_date": "2025-04-01", "end_date": "2025-04-30", "include_end_date": True,
           "holiday_country": "Germany"}],
         query="How many days are there from {start_date} to {end_date}"
               "[ (counting the end date: {include_end_date})][, skipping {holiday_country} holidays]?"),
    spec("calendar", "calendar:get_public_holidays",
         "List the national public holidays of a country in a year (optionally one month).",
         {"country": string("Country name or ISO code, e.g. 'France' or 'US'."),
          "year": integer("Year (1900-2100).", minimum=1900, maximum=2100),
          "month": integer("Only this month (1-12).", minimum=1, maximum=12)},
         ["country", "year"],
         [{"country": "France", "year": 2025}, {"country": "US", "year": 2026, "month": 11},
          {"country": "JP", "year": 2025}],
         query="What are the public holidays in {country} in {year}[, month {month}]?"),
]
