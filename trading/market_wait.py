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
`set_clock`), when what the calendar said no longer holds. It also moves a generation
(`bronco:market_closed_gen`): a skip noted from a quote taken before the clear (a cycle in
flight while the clock jumped) is not written, or it would last until the next real open
(hours at night: the `run_stack` scenario's Saturday-then-Monday case stalled so).
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
_GENERATION = "bronco:market_closed_gen"
# Set the skip only while the generation is the one read before the quote.
_NOTE_IF_SAME_GENERATION = """
if (redis.call('GET', KEYS[2]) or '0') == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


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


def market_closed_note(code: str, market_state: str, *, generation: int) -> datetime | None:
    """Record that a quote found `code`'s market closed (`market_state`, the venue's name);
    `generation` is `market_closed_look`'s, read before the quote. Returns when the skip
    ends, or None when a clear came in between (nothing is noted: the quote may predate a
    clock that jumped)."""
    now = timezone.now()
    until = market_reopens_at(code, now)
    ms = max(int((until - now).total_seconds() * 1000), 1)
    noted = _redis().eval(
        _NOTE_IF_SAME_GENERATION,
        2,
        _PREFIX + code,
        _GENERATION,
        market_state or "CLOSED",
        ms,
        str(generation),
    )
    return until if noted else None


def market_closed_look(code: str) -> tuple[str | None, int]:
    """`code`'s skip (its market state while one is on, else None) and the skips'
    generation, in one round trip: pass the generation to `market_closed_note`."""
    state, generation = _redis().mget(_PREFIX + code, _GENERATION)
    return (state.decode() if state is not None else None), int(generation or 0)


def market_closed_state(code: str) -> str | None:
    """The market state of `code`'s skip while one is on (its quote is not to be asked),
    else None."""
    value = _redis().get(_PREFIX + code)
    return value.decode() if value is not None else None


def market_closed_clear() -> int:
    """End every skip (a clock that jumped); returns how many there were. The generation
    moves first, so a note from a quote taken before this is not written after it."""
    client = _redis()
    client.incr(_GENERATION)
    keys = list(client.scan_iter(match=_PREFIX + "*", count=500))
    return int(client.delete(*keys)) if keys else 0
