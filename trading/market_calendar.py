"""Market sessions: the exchange calendars of the markets Bronco trades, and Futu's market
states mapped onto named sessions.

Two halves:

- `futu_state_at(market, when)`: the market state Futu's `get_market_state` would report for
  a security of `market` ("US" or "HK") at the aware datetime `when`, from the exchange's own
  calendar in the `exchange-calendars` library (XNYS for US, XHKG for HK: holidays, half
  days, HK's lunch break). The OpenD simulator answers `get_market_state` with it.
- `session_of_state(state)`: the named session a Futu state belongs to (`REGULAR`,
  `PRE_MARKET`, `AFTER_HOURS`, `OVERNIGHT`, `LUNCH_BREAK`, `CLOSED`). Bronco reads the state
  of each security from OpenD and trades only in the sessions the `TRADING_SESSIONS` setting
  names for its market.

Outside facts (sources):
- US extended hours as Futu (moomoo) offers them: pre-market 04:00-09:30 ET, after-hours
  16:00-20:00 ET, overnight 20:00-04:00 ET from Sunday evening to Friday morning, following
  the NYSE holiday calendar (no overnight session on the evening before a closed day);
  on NYSE early-close days (13:00 ET) after-hours runs 13:00-17:00 ET.
  https://openapi.futunn.com/futu-api-doc/en/trade/place-order.html (`session`),
  https://www.nyse.com/markets/hours-calendars
- Futu's US regular session is reported as `AFTERNOON` (one continuous session), pre-market
  as `PRE_MARKET_BEGIN`, after-hours as `AFTER_HOURS_BEGIN` (then `AFTER_HOURS_END`), the
  overnight session as `OVERNIGHT`; HK as `AUCTION` (pre-opening, 09:00-09:30 HKT),
  `MORNING`, `REST` (the lunch break), `AFTERNOON`, `CLOSED`
  (`futu.common.constant.MarketState`, Qot_Common.QotMarketState).
- HKEX: pre-opening 09:00-09:30, morning 09:30-12:00, afternoon 13:00-16:00 HKT; half days
  (Christmas Eve, New Year's Eve, Lunar New Year's Eve) morning only; all in XHKG.
"""

from __future__ import annotations

import functools
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd

REGULAR = "REGULAR"
PRE_MARKET = "PRE_MARKET"
AFTER_HOURS = "AFTER_HOURS"
OVERNIGHT = "OVERNIGHT"
LUNCH_BREAK = "LUNCH_BREAK"
CLOSED = "CLOSED"
# Sessions an order can trade in, per market (a setting names a subset of these).
TRADABLE_SESSIONS: dict[str, frozenset[str]] = {
    "US": frozenset({REGULAR, PRE_MARKET, AFTER_HOURS, OVERNIGHT}),
    "HK": frozenset({REGULAR}),
}

EXCHANGES = {"US": "XNYS", "HK": "XHKG"}
TIMEZONES = {"US": ZoneInfo("America/New_York"), "HK": ZoneInfo("Asia/Hong_Kong")}

# Futu market state name -> the session it belongs to; any other state is CLOSED.
_SESSION_OF_STATE = {
    "MORNING": REGULAR,
    "AFTERNOON": REGULAR,
    "PRE_MARKET_BEGIN": PRE_MARKET,
    "AFTER_HOURS_BEGIN": AFTER_HOURS,
    "OVERNIGHT": OVERNIGHT,
    "REST": LUNCH_BREAK,
}

_US_PRE_OPEN = time(4, 0)
_US_AFTER_HOURS = timedelta(hours=4)  # after the close: 16:00-20:00, 13:00-17:00 on half days
_US_OVERNIGHT_START = time(20, 0)
_HK_AUCTION = time(9, 0)


def session_of_state(state: str) -> str:
    """The named session of a Futu market state ("AFTERNOON" -> "REGULAR"); CLOSED for any
    state that is no trading session (closed, auction, waiting to open, unknown)."""
    return _SESSION_OF_STATE.get((state or "").upper(), CLOSED)


def market_of_code(code: str) -> str:
    """ "US.AAPL" -> "US"."""
    return code.split(".", 1)[0].upper()


def parse_sessions(market: str, text: str) -> frozenset[str]:
    """A comma-separated session list from a setting ("REGULAR,PRE_MARKET") -> a set.
    Raises ValueError naming the market and the sessions it cannot trade."""
    names = frozenset(part.strip().upper() for part in text.split(",") if part.strip())
    allowed = TRADABLE_SESSIONS.get(market.upper())
    if allowed is None:
        raise ValueError(f"unknown market {market!r}: one of {sorted(TRADABLE_SESSIONS)}")
    unknown = names - allowed
    if unknown:
        raise ValueError(
            f"{market} cannot trade in {sorted(unknown)}: its sessions are {sorted(allowed)}"
        )
    return names


def default_sessions(market: str, *, fill_outside_rth: bool) -> frozenset[str]:
    """The sessions Bronco trades in `market` when TRADING_SESSIONS names none: the regular
    session, and US pre-market and after-hours when orders may fill outside regular hours
    (FUTU_FILL_OUTSIDE_RTH)."""
    if market.upper() == "US" and fill_outside_rth:
        return frozenset({REGULAR, PRE_MARKET, AFTER_HOURS})
    return frozenset({REGULAR})


def sessions_traded(market: str) -> frozenset[str]:
    """The sessions Bronco trades in `market`: the TRADING_SESSIONS setting's, else
    `default_sessions`. Raises ValueError for a setting naming a session `market` lacks."""
    from django.conf import settings

    text = settings.TRADING_SESSIONS.get(market.upper(), "")
    if text:
        return parse_sessions(market, text)
    return default_sessions(market, fill_outside_rth=settings.FUTU_FILL_OUTSIDE_RTH)


def next_session_open(
    market: str, sessions: frozenset[str], when: datetime, *, days: int = 14
) -> datetime | None:
    """The first instant after the aware datetime `when` at which a session of `sessions`
    begins in `market` (an instant in one of them whose previous second is in none), in
    UTC; None when none begins within `days` days. Every session of this module starts on
    one of these boundaries: 04:00 and 20:00 ET, the exchange's open and close (US
    after-hours), HK's open and the end of its lunch break. Raises ValueError as
    `futu_state_at` does."""
    market = market.upper()
    tz = TIMEZONES.get(market)
    if tz is None:
        raise ValueError(f"unknown market {market!r}: one of {sorted(EXCHANGES)}")
    if when.tzinfo is None:
        raise ValueError("when must be an aware datetime")
    cal = _calendar(market)
    start = when.astimezone(tz).date()
    candidates: list[datetime] = []
    for offset in range(days + 1):
        day = start + timedelta(days=offset)
        if market == "US":
            candidates += [
                datetime.combine(day, _US_PRE_OPEN, tz),
                datetime.combine(day, _US_OVERNIGHT_START, tz),
            ]
        label = _session_day(market, day)
        if label is None:
            continue
        candidates.append(cal.session_open(label).to_pydatetime())
        if market == "US":
            candidates.append(cal.session_close(label).to_pydatetime())
        elif cal.session_has_break(label):
            candidates.append(cal.session_break_end(label).to_pydatetime())

    def tradable(at: datetime) -> bool:
        return session_of_state(futu_state_at(market, at)) in sessions

    second = timedelta(seconds=1)
    for at in sorted(c for c in candidates if c > when):
        if tradable(at) and not tradable(at - second):
            return at.astimezone(ZoneInfo("UTC"))
    return None


@functools.lru_cache(maxsize=4)
def _calendar(market: str):  # type: ignore[no-untyped-def]
    import exchange_calendars

    try:
        return exchange_calendars.get_calendar(EXCHANGES[market])
    except KeyError:
        raise ValueError(f"unknown market {market!r}: one of {sorted(EXCHANGES)}") from None


def _session_day(market: str, day) -> pd.Timestamp | None:  # type: ignore[no-untyped-def]
    cal = _calendar(market)
    label = pd.Timestamp(day)
    if label < cal.first_session or label > cal.last_session:
        raise ValueError(
            f"{day} is outside the {EXCHANGES[market]} calendar "
            f"({cal.first_session.date()} to {cal.last_session.date()})"
        )
    return label if cal.is_session(label) else None


def futu_state_at(market: str, when: datetime) -> str:
    """Futu's market state name for a security of `market` at the aware datetime `when`.
    Raises ValueError for an unknown market, a naive datetime, or a day outside the
    calendar's range (exchange-calendars covers about 20 years back and 1 year ahead)."""
    market = market.upper()
    if when.tzinfo is None:
        raise ValueError("when must be an aware datetime")
    if market == "US":
        return _us_state(when)
    if market == "HK":
        return _hk_state(when)
    raise ValueError(f"unknown market {market!r}: one of {sorted(EXCHANGES)}")


def _us_state(when: datetime) -> str:
    cal = _calendar("US")
    local = when.astimezone(TIMEZONES["US"])
    day = _session_day("US", local.date())
    ts = pd.Timestamp(when)
    if day is not None:
        open_, close = cal.session_open(day), cal.session_close(day)
        if local.time() < _US_PRE_OPEN:
            return "OVERNIGHT"  # the overnight session leading into a trading day
        if ts < open_:
            return "PRE_MARKET_BEGIN"
        if ts < close:
            return "AFTERNOON"
        if ts < close + _US_AFTER_HOURS:
            return "AFTER_HOURS_BEGIN"
    if local.time() >= _US_OVERNIGHT_START:
        if _session_day("US", local.date() + timedelta(days=1)) is not None:
            return "OVERNIGHT"
    if day is not None and local.time() >= _US_PRE_OPEN:
        return "AFTER_HOURS_END"
    return "CLOSED"


def _hk_state(when: datetime) -> str:
    cal = _calendar("HK")
    local = when.astimezone(TIMEZONES["HK"])
    day = _session_day("HK", local.date())
    if day is None:
        return "CLOSED"
    ts = pd.Timestamp(when)
    open_, close = cal.session_open(day), cal.session_close(day)
    if local.time() < _HK_AUCTION or ts >= close:
        return "CLOSED"
    if ts < open_:
        return "AUCTION"
    if cal.session_has_break(day):
        if ts < cal.session_break_start(day):
            return "MORNING"
        if ts < cal.session_break_end(day):
            return "REST"
        return "AFTERNOON"
    return "MORNING"  # a half day: the morning session only
