"""Finance tools: currency conversion and rates, stock lookup, quotes and history, portfolio
analysis, loan payments and compound interest.

Exchange rates are a bundled reference snapshot (``data/currencies.json``); stocks are
fictional companies with bundled prices (``data/stocks.json``). Currency arguments accept an
ISO 4217 code or a country name (so the country from ``get_city_info`` works).
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from ttpa_ray.tools.impl._common import (currency_code, load, norm, req_bool, req_choice, req_int, req_list,
                                         req_num, req_obj, req_str, rng)
from ttpa_ray.tools.impl._schema import array, boolean, enum, integer, number, obj, spec, string

SECTORS = ["Technology", "Healthcare", "Energy", "Financials", "Industrials", "Consumer Staples",
           "Consumer Discretionary", "Communication Services", "Utilities", "Real Estate"]


def _rate(frm: str, to: str) -> float:
    table = load("currencies.json")["currencies"]
    return table[to]["per_usd"] / table[frm]["per_usd"]


def convert_currency(amount: float, from_currency: str, to_currency: str) -> dict[str, Any]:
    amount = req_num("amount", amount, lo=0, hi=1e12)
    frm, to = currency_code(from_currency, "from_currency"), currency_code(to_currency, "to_currency")
    rate = _rate(frm, to)
    return {"amount": amount, "from": frm, "to": to, "rate": round(rate, 6), "converted": round(amount * rate, 2),
            "rates_as_of": load("currencies.json")["as_of"]}


def get_exchange_rates(base: str = "USD", symbols: list[str] | None = None) -> dict[str, Any]:
    base = currency_code(base, "base")
    table = load("currencies.json")["currencies"]
    wanted = sorted(table) if symbols is None else [currency_code(s, "symbols[]")
                                                    for s in req_list("symbols", symbols, 1, 40)]
    return {"base": base, "as_of": load("currencies.json")["as_of"],
            "rates": {c: round(_rate(base, c), 6) for c in wanted if c != base},
            "names": {c: table[c]["name"] for c in wanted if c != base}}


@lru_cache(maxsize=None)
def _stocks() -> dict[str, dict[str, Any]]:
    return {s["symbol"]: s for s in load("stocks.json")["stocks"]}


def _stock(symbol: Any) -> dict[str, Any]:
    text = req_str("symbol", symbol).upper()
    if text in _stocks():
        return _stocks()[text]
    by_name = [s for s in _stocks().values() if norm(text) in norm(s["name"])]
    if len(by_name) == 1:
        return by_name[0]
    raise ValueError(f"unknown stock symbol {symbol!r}; use lookup_stock_symbol to find one "
                     f"(known: {', '.join(sorted(_stocks()))})")


def lookup_stock_symbol(query: str = "", sector: str | None = None) -> dict[str, Any]:
    q = norm(req_str("query", query, allow_empty=True))
    sec = None if sector is None else req_choice("sector", sector, SECTORS)
    hits = [{"symbol": s["symbol"], "name": s["name"], "sector": s["sector"], "exchange": s["exchange"]}
            for s in _stocks().values()
            if (not q or q in norm(s["name"]) or q == norm(s["symbol"])) and (sec is None or s["sector"] == sec)]
    return {"query": query, "sector": sec, "matches": hits, "note": load("stocks.json")["note"]}


def get_stock_quote(symbol: str, include_fundamentals: bool = True) -> dict[str, Any]:
    s = _stock(symbol)
    include_fundamentals = req_bool("include_fundamentals", include_fundamentals)
    last, prev = s["closes"][-1], s["closes"][-2]
    r = rng("quote", s["symbol"])
    out: dict[str, Any] = {
        "symbol": s["symbol"], "name": s["name"], "currency": s["currency"], "as_of": load("stocks.json")["as_of"],
        "price": last, "previous_close": prev, "change": round(last - prev, 2),
        "change_pct": round(100 * (last - prev) / prev, 2),
        "day_high": round(max(last, prev) * (1 + r.uniform(0.002, 0.015)), 2),
        "day_low": round(min(last, prev) * (1 - r.uniform(0.002, 0.015)), 2), "volume": s["volumes"][-1]}
    if include_fundamentals:
        out.update({"sector": s["sector"],
                    "market_cap_billions": round(last * s["shares_outstanding_millions"] / 1000, 2),
                    "pe_ratio": round(last / s["eps_usd"], 1) if s["eps_usd"] > 0 else None,
                    "dividend_yield_pct": round(100 * s["dividend_per_share_usd"] / last, 2),
                    "three_month_high": max(s["closes"]), "three_month_low": min(s["closes"])})
    return out


def get_stock_history(symbol: str, days: int = 20, interval: str = "daily") -> dict[str, Any]:
    s = _stock(symbol)
    days = req_int("days", days, 2, 63)
    interval = req_choice("interval", interval, ["daily", "weekly"])
    dates = load("stocks.json")["dates"][-days:]
    closes, volumes = s["closes"][-days:], s["volumes"][-days:]
    rows = [{"date": d, "close": c, "volume": v} for d, c, v in zip(dates, closes, volumes)]
    if interval == "weekly":  # last trading day of each ISO week
        rows = [row for i, row in enumerate(rows) if i == len(rows) - 1
                or _week(rows[i + 1]["date"]) != _week(row["date"])]
    return {"symbol": s["symbol"], "interval": interval, "prices": rows,
            "period_return_pct": round(100 * (closes[-1] - closes[0]) / closes[0], 2),
            "period_high": max(closes), "period_low": min(closes),
            "average_volume": round(sum(volumes) / len(volumes))}


def _week(date: str) -> tuple[int, int]:
    iso = dt.date.fromisoformat(date).isocalendar()
    return iso[0], iso[1]


def analyze_portfolio(holdings: list[dict[str, Any]], currency: str = "USD") -> dict[str, Any]:
    cur = currency_code(currency)
    fx = _rate("USD", cur)
    rows, sectors, merged = [], {}, {}
    for i, h in enumerate(req_list("holdings", holdings, 1, 30)):
        h = req_obj(f"holdings[{i}]", h, ("symbol", "shares"))
        s = _stock(h["symbol"])
        shares = req_num(f"holdings[{i}].shares", h["shares"], hi=1e12, positive=True)
        cost = h.get("cost_basis_per_share")
        cost = None if cost is None else req_num(f"holdings[{i}].cost_basis_per_share", cost, 0, 1e9)
        if s["symbol"] in merged:
            raise ValueError(f"`holdings` lists {s['symbol']} twice; combine the positions")
        merged[s["symbol"]] = True
        value = shares * s["closes"][-1]
        day = shares * (s["closes"][-1] - s["closes"][-2])
        row: dict[str, Any] = {"symbol": s["symbol"], "shares": shares, "price_usd": s["closes"][-1],
                               "value": round(value * fx, 2), "day_change": round(day * fx, 2)}
        if cost is not None:
            row["unrealized_gain"] = round((value - shares * cost) * fx, 2)
            row["unrealized_gain_pct"] = round(100 * (s["closes"][-1] - cost) / cost, 2) if cost else None
        rows.append(row)
        sectors[s["sector"]] = sectors.get(s["sector"], 0.0) + value * fx
    total = sum(r["value"] for r in rows)
    for r in rows:
        r["weight_pct"] = round(100 * r["value"] / total, 2)
    return {"currency": cur, "total_value": round(total, 2), "day_change": round(sum(r["day_change"] for r in rows), 2),
            "holdings": rows,
            "sector_allocation_pct": {k: round(100 * v / total, 2) for k, v in sorted(sectors.items())},
            "largest_position": max(rows, key=lambda r: r["value"])["symbol"]}


def calculate_loan_payment(principal: float, annual_rate_percent: float, years: int, payments_per_year: int = 12,
                           extra_payment: float = 0.0, include_schedule: bool = False) -> dict[str, Any]:
    principal = req_num("principal", principal, hi=1e10, positive=True)
    rate = req_num("annual_rate_percent", annual_rate_percent, 0, 50)
    years = req_int("years", years, 1, 50)
    per = req_choice("payments_per_year", payments_per_year, [12, 26, 52])
    extra = req_num("extra_payment", extra_payment, 0, 1e9)
    include_schedule = req_bool("include_schedule", include_schedule)
    n, i = years * per, rate / 100 / per
    payment = principal / n if i < 1e-12 else principal * i / (1 - (1 + i) ** -n)
    balance, paid_interest, periods, schedule = principal, 0.0, 0, []
    year_interest = year_principal = 0.0
    while balance > 0.005 and periods < n:
        interest = balance * i
        toward = min(balance, payment + extra - interest)
        balance -= toward
        paid_interest += interest
        year_interest, year_principal = year_interest + interest, year_principal + toward
        periods += 1
        if periods % per == 0 or balance <= 0.005:
            schedule.append({"year": (periods - 1) // per + 1, "principal_paid": round(year_principal, 2),
                             "interest_paid": round(year_interest, 2), "balance": round(max(balance, 0.0), 2)})
            year_interest = year_principal = 0.0
    out: dict[str, Any] = {"payment": round(payment, 2), "payments_per_year": per, "number_of_payments": periods,
                           "total_interest": round(paid_interest, 2),
                           "total_paid": round(principal + paid_interest, 2)}
    if extra:
        out["extra_payment"] = extra
        out["years_saved"] = round((n - periods) / per, 2)
    if include_schedule:
        out["yearly_schedule"] = schedule
    return out


def calculate_compound_interest(principal: float, annual_rate_percent: float, years: int,
                                compounds_per_year: int = 12, monthly_contribution: float = 0.0) -> dict[str, Any]:
    principal = req_num("principal", principal, 0, 1e10)
    rate = req_num("annual_rate_percent", annual_rate_percent, -20, 50)
    years = req_int("years", years, 1, 100)
    k = req_choice("compounds_per_year", compounds_per_year, [1, 2, 4, 12, 365])
    monthly = req_num("monthly_contribution", monthly_contribution, 0, 1e8)
    balance, yearly = principal, []
    monthly_growth = (1 + rate / 100 / k) ** (k / 12)  # equivalent monthly factor
    for year in range(1, years + 1):
        for _ in range(12):
            balance = balance * monthly_growth + monthly
        yearly.append({"year": year, "balance": round(balance, 2)})
    contributed = principal + monthly * 12 * years
    return {"final_balance": round(balance, 2), "total_contributions": round(contributed, 2),
            "interest_earned": round(balance - contributed, 2),
            "effective_annual_rate_pct": round(100 * ((1 + rate / 100 / k) ** k - 1), 4),
            "yearly_balances": yearly if years <= 40 else yearly[::5]}


# --------------------------------------------------------------------------- schemas

_CUR = "ISO 4217 currency code such as 'EUR' or 'JPY' (a country name like 'Japan' also works)."
_SYM = string("Ticker symbol, e.g. 'NOVX' (see lookup_stock_symbol).")

SPECS = [
    spec("finance", "finance:convert_currency",
         "Convert an amount of money from one currency to another using reference exchange rates.",
         {"amount": number("Amount to convert (>= 0).", minimum=0), "from_currency": string("Source currency. " + _CUR),
          "to_currency": string("Target currency. " + _CUR)}, ["amount", "from_currency", "to_currency"],
         [{"amount": 300, "from_currency": "EUR", "to_currency": "JPY"},
          {"amount": 1250.5, "from_currency": "USD", "to_currency": "Portugal"}],
         query="How much is {amount} {from_currency} in {to_currency}?"),
    spec("finance", "finance:get_exchange_rates",
         "Get reference exchange rates from a base currency to other currencies.",
         {"base": string("Base currency. " + _CUR, "USD"),
          "symbols": array(string("Currency code."), "Currencies to include (default: all known).", minItems=1)},
         [], [{"base": "GBP", "symbols": ["EUR", "USD", "CHF"]}, {}],
         query="What are the exchange rates[ from {base}][ to {symbols}]?"),
    spec("finance", "finance:lookup_stock_symbol",
         "Find stock ticker symbols by company name and/or sector.",
         {"query": string("Part of a company name, e.g. 'harbor' (empty: all companies).", ""),
          "sector": enum(SECTORS, "Only companies in this sector.")}, [],
         [{"query": "novasphere"}, {"sector": "Technology"}],
         query="What are the ticker symbols of companies[ matching '{query}'][ in the {sector} sector]?"),
    spec("finance", "finance:get_stock_quote",
         "Get the latest stock quote (price, change, day range, volume) and optionally fundamentals "
         "(market cap, P/E, dividend yield, 3-month range).",
         {"symbol": _SYM, "include_fundamentals": boolean("Include market cap, P/E and dividend yield.", True)},
         ["symbol"], [{"symbol": "NOVX"}, {"symbol": "HRBR", "include_fundamentals": False}],
         query="What is the latest stock quote for {symbol}[ (fundamentals too: {include_fundamentals})]?"),
    spec("finance", "finance:get_stock_history",
         "Get recent closing prices and volumes of a stock with the period's return, high and low.",
         {"symbol": _SYM, "days": integer("Number of trading days back (2-63).", 20, minimum=2, maximum=63),
          "interval": enum(["daily", "weekly"], "daily closes or the last close of each week.", "daily")},
         ["symbol"], [{"symbol": "BLTZ", "days": 10}, {"symbol": "TDLM", "days": 60, "interval": "weekly"}],
         query="How has {symbol} traded[ over the last {days} trading days][ ({interval} closes)]?"),
    spec("finance", "finance:analyze_portfolio",
         "Value a stock portfolio: position values, weights, day change, unrealized gains and sector allocation.",
         {"holdings": array(obj({"symbol": string("Ticker symbol."), "shares": number("Number of shares (> 0)."),
                                 "cost_basis_per_share": number("Purchase price per share in USD.")},
                                "One position.", ["symbol", "shares"]), "Positions (1-30).", minItems=1, maxItems=30),
          "currency": string("Currency to report values in. " + _CUR, "USD")}, ["holdings"],
         [{"holdings": [{"symbol": "NOVX", "shares": 10},
                        {"symbol": "HRBR", "shares": 25, "cost_basis_per_share": 55}]},
          {"holdings": [{"symbol": "MRDN", "shares": 4.5}], "currency": "EUR"}],
         query="How is my portfolio doing? I hold {holdings}[; report the values in {currency}]."),
    spec("finance", "finance:calculate_loan_payment",
         "Calculate the periodic payment of an amortizing loan or mortgage, total interest and, optionally, a "
         "yearly schedule; an extra payment per period shows the time saved.",
         {"principal": number("Loan amount (> 0).", exclusiveMinimum=0),
          "annual_rate_percent": number("Nominal annual interest rate in percent, e.g. 4.5.", minimum=0, maximum=50),
          "years": integer("Loan term in years (1-50).", minimum=1, maximum=50),
          "payments_per_year": enum([12, 26, 52], "Payment frequency: monthly, biweekly or weekly.", 12),
          "extra_payment": number("Extra principal paid each period.", 0, minimum=0),
          "include_schedule": boolean("Include a year-by-year schedule.", False)},
         ["principal", "annual_rate_percent", "years"],
         [{"principal": 250000, "annual_rate_percent": 4.5, "years": 30},
          {"principal": 18000, "annual_rate_percent": 6.9, "years": 5, "payments_per_year": 26, "extra_payment": 50,
           "include_schedule": True}],
         query="What would I pay on a {principal} loan at {annual_rate_percent}% over {years} years"
               "[ with {payments_per_year} payments a year][ paying {extra_payment} extra each time]"
               "[ (yearly schedule: {include_schedule})]?"),
    spec("finance", "finance:calculate_compound_interest",
         "Project the growth of savings with compound interest and optional monthly contributions.",
         {"principal": number("Starting balance (>= 0).", minimum=0),
          "annual_rate_percent": number("Nominal annual interest rate in percent.", minimum=-20, maximum=50),
          "years": integer("Number of years (1-100).", minimum=1, maximum=100),
          "compounds_per_year": enum([1, 2, 4, 12, 365], "Compounding periods per year.", 12),
          "monthly_contribution": number("Amount added at the end of each month.", 0, minimum=0)},
         ["principal", "annual_rate_percent", "years"],
         [{"principal": 10000, "annual_rate_percent": 5, "years": 10},
          {"principal": 0, "annual_rate_percent": 7, "years": 20, "compounds_per_year": 365,
           "monthly_contribution": 200}],
         query="How much will {principal} grow to at {annual_rate_percent}% a year over {years} years"
               "[, compounded {compounds_per_year} times a year]"
               "[ with {monthly_contribution} added each month]?"),
]
