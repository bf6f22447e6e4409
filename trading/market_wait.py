"""A closed market is not asked again every beat: once a quote says a code's market is closed,
cycles of that code skip their quote until the next session Bronco trades opens by the
exchange calendar (`trading.market_calendar.next_session_open`). Futu's snapshot budget
(60 per 30 s) is shared by every symbol and by the API's quotes: a weekend of 1 s beats would
otherwise spend about 170,000 snapshots per symbol on a market known to be closed.

When the calendar says a traded session is under way but OpenD said closed (a holiday the
calendar lacks, a typhoon or an unscheduled halt), the next look is TRADING_MARKET_RECHECK_SECONDS
later, never a whole session away.

The skip is one Redis key per code (`bronco:market_closed:<code>`, value the market state
the quote gave, expiring at the next open): every worker sees it, and it ends by itself.
`market_closed_clear` ends them all at once: for a clock that jumped (the simulator's
`set_clock`), when what the calendar said no longer holds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.utils import timezone

from trading.market_calendar import (
    futu_state_at,
    market_of_code,
    next_session_open,
    session_of_state,
    sessions_traded,
)

_PREFIX = "bronco:market_closed:"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def market_reopens_at(code: str, now: datetime) -> datetime:
    """When `code`'s market should next be asked, its quote having said closed at `now`
    (aware): the next open of a session Bronco trades, or now + TRADING_MARKET_RECHECK_SECONDS
    when the calendar says one is under way (or none opens within 14 days)."""
    market = market_of_code(code)
    sessions = sessions_traded(market)
    recheck = now + timedelta(seconds=settings.TRADING_MARKET_RECHECK_SECONDS)
    if session_of_state(futu_state_at(market, now)) in sessions:
        return recheck
    return next_session_open(market, sessions, now) or recheck


def market_closed_note(code: str, market_state: str) -> datetime:
    """Record that a quote found `code`'s market closed (`market_state`, the venue's name);
    returns when the skip ends."""
    now = timezone.now()
    until = market_reopens_at(code, now)
    ms = max(int((until - now).total_seconds() * 1000), 1)
    _redis().set(_PREFIX + code, market_state or "CLOSED", px=ms)
    return until


def market_closed_state(code: str) -> str | None:
    """The market state of `code`'s skip while one is on (its quote is not to be asked),
    else None."""
    value = _redis().get(_PREFIX + code)
    return value.decode() if value is not None else None


def market_closed_clear() -> int:
    """End every skip (a clock that jumped); returns how many there were."""
    client = _redis()
    keys = list(client.scan_iter(match=_PREFIX + "*", count=500))
    return int(client.delete(*keys)) if keys else 0
