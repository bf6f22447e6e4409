"""Market sessions from the exchange calendars (trading.market_calendar): US regular,
pre-market, after-hours and overnight; HK morning, lunch break and afternoon; holidays and
half days; and Futu's states mapped onto the sessions Bronco trades."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from trading.market_calendar import (
    AFTER_HOURS,
    CLOSED,
    LUNCH_BREAK,
    OVERNIGHT,
    PRE_MARKET,
    REGULAR,
    futu_state_at,
    parse_sessions,
    session_of_state,
)

NY = ZoneInfo("America/New_York")
HK = ZoneInfo("Asia/Hong_Kong")


@pytest.mark.parametrize(
    ("local", "state"),
    [
        ("2026-12-05 12:00", "CLOSED"),  # Saturday
        ("2026-12-06 19:59", "CLOSED"),  # Sunday before the overnight session
        ("2026-12-06 20:00", "OVERNIGHT"),  # Sunday night leads into Monday
        ("2026-12-07 03:59", "OVERNIGHT"),
        ("2026-12-07 04:00", "PRE_MARKET_BEGIN"),
        ("2026-12-07 09:29", "PRE_MARKET_BEGIN"),
        ("2026-12-07 09:30", "AFTERNOON"),  # Futu's US regular session
        ("2026-12-07 15:59", "AFTERNOON"),
        ("2026-12-07 16:00", "AFTER_HOURS_BEGIN"),
        ("2026-12-07 20:00", "OVERNIGHT"),
        ("2026-12-04 20:00", "AFTER_HOURS_END"),  # Friday night: no overnight session
        ("2026-11-26 11:00", "CLOSED"),  # Thanksgiving
        ("2026-11-25 20:00", "AFTER_HOURS_END"),  # no overnight before the holiday
        ("2026-11-27 12:59", "AFTERNOON"),  # the half day after Thanksgiving closes at 13:00
        ("2026-11-27 13:00", "AFTER_HOURS_BEGIN"),
        ("2026-11-27 17:00", "AFTER_HOURS_END"),  # after-hours ends at 17:00 on half days
        ("2026-12-25 10:00", "CLOSED"),  # Christmas
    ],
)
def test_us_states(local, state):
    assert futu_state_at("US", datetime.fromisoformat(local).replace(tzinfo=NY)) == state


@pytest.mark.parametrize(
    ("local", "state"),
    [
        ("2026-12-07 08:59", "CLOSED"),
        ("2026-12-07 09:10", "AUCTION"),  # pre-opening session
        ("2026-12-07 09:30", "MORNING"),
        ("2026-12-07 12:00", "REST"),  # the lunch break
        ("2026-12-07 12:59", "REST"),
        ("2026-12-07 13:00", "AFTERNOON"),
        ("2026-12-07 16:00", "CLOSED"),
        ("2026-12-05 10:00", "CLOSED"),  # Saturday
        ("2026-12-24 11:00", "MORNING"),  # Christmas Eve: morning only
        ("2026-12-24 13:30", "CLOSED"),
        ("2026-12-25 10:00", "CLOSED"),  # Christmas
        ("2026-12-28 10:00", "MORNING"),
    ],
)
def test_hk_states(local, state):
    assert futu_state_at("HK", datetime.fromisoformat(local).replace(tzinfo=HK)) == state


def test_states_map_onto_sessions():
    assert session_of_state("AFTERNOON") == REGULAR
    assert session_of_state("MORNING") == REGULAR
    assert session_of_state("PRE_MARKET_BEGIN") == PRE_MARKET
    assert session_of_state("AFTER_HOURS_BEGIN") == AFTER_HOURS
    assert session_of_state("OVERNIGHT") == OVERNIGHT
    assert session_of_state("REST") == LUNCH_BREAK
    for state in ("CLOSED", "AUCTION", "AFTER_HOURS_END", "WAITING_OPEN", "", "NIGHT_OPEN"):
        assert session_of_state(state) == CLOSED


def test_session_settings_are_checked():
    assert parse_sessions("US", "regular, overnight") == {REGULAR, OVERNIGHT}
    assert parse_sessions("HK", "") == frozenset()
    with pytest.raises(ValueError, match="HK cannot trade in \\['OVERNIGHT'\\]"):
        parse_sessions("HK", "REGULAR,OVERNIGHT")
    with pytest.raises(ValueError, match="unknown market"):
        parse_sessions("SZ", "REGULAR")


def test_bad_input():
    with pytest.raises(ValueError, match="aware"):
        futu_state_at("US", datetime(2026, 12, 7, 10))
    with pytest.raises(ValueError, match="unknown market"):
        futu_state_at("SH", datetime(2026, 12, 7, 10, tzinfo=NY))
    with pytest.raises(ValueError, match="outside the XNYS calendar"):
        futu_state_at("US", datetime(2090, 1, 3, 10, tzinfo=NY))


# next_session_open: the start of the next session Bronco trades (the API's symbols).
@pytest.mark.parametrize(
    "market, sessions, when, expected",
    [
        # Saturday: US regular opens Monday 09:30 ET, pre-market 04:00 ET, overnight Sunday
        # 20:00 ET; HK Monday 09:30 HKT.
        ("US", {"REGULAR"}, "2026-11-28T12:00Z", "2026-11-30T14:30:00+00:00"),
        ("US", {"REGULAR", "PRE_MARKET"}, "2026-11-28T12:00Z", "2026-11-30T09:00:00+00:00"),
        ("US", {"OVERNIGHT"}, "2026-11-28T12:00Z", "2026-11-30T01:00:00+00:00"),
        ("HK", {"REGULAR"}, "2026-11-28T12:00Z", "2026-11-30T01:30:00+00:00"),
        # HK lunch break: the afternoon session at 13:00 HKT.
        ("HK", {"REGULAR"}, "2026-11-30T04:30Z", "2026-11-30T05:00:00+00:00"),
        # Thanksgiving (NYSE closed): the half day after it.
        ("US", {"REGULAR"}, "2026-11-26T15:00Z", "2026-11-27T14:30:00+00:00"),
        # During the regular session: the next day's open, not now.
        ("US", {"REGULAR"}, "2026-11-30T15:00Z", "2026-12-01T14:30:00+00:00"),
    ],
)
def test_next_session_open_follows_the_exchange_calendar(market, sessions, when, expected):
    from trading.market_calendar import next_session_open

    at = datetime.fromisoformat(when.replace("Z", "+00:00"))
    assert next_session_open(market, frozenset(sessions), at).isoformat() == expected


def test_sessions_traded_follow_the_setting_then_the_default(settings):
    from trading.market_calendar import sessions_traded

    settings.TRADING_SESSIONS = {"US": "REGULAR,OVERNIGHT", "HK": ""}
    settings.FUTU_FILL_OUTSIDE_RTH = False
    assert sessions_traded("US") == {"REGULAR", "OVERNIGHT"}
    assert sessions_traded("HK") == {"REGULAR"}
    settings.TRADING_SESSIONS = {"US": "", "HK": ""}
    settings.FUTU_FILL_OUTSIDE_RTH = True
    assert sessions_traded("US") == {"REGULAR", "PRE_MARKET", "AFTER_HOURS"}
