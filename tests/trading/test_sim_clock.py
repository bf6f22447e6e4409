"""The OpenD simulator's clock: markets follow their exchange calendars at a simulated time
that tests drive over the control port; Bronco reads each security's state and trades only
in the sessions its settings name."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from trading.broker import Side
from trading.session import get_broker

pytestmark = pytest.mark.broker


def test_clock_drives_market_state_and_matching_from_the_calendar(broker_settings):
    """With the clock set, get_market_state answers per security from XNYS/XHKG; a US order
    placed on Saturday waits (WAITING_SUBMIT) and fills once the clock reaches Monday's
    open; HK is at lunch while the US trades pre-market."""
    control = broker_settings.control
    clock = control.set_clock(at="2026-12-05T17:00:00+00:00", rate=0)  # Saturday
    assert clock["states"] == {"US": "CLOSED", "HK": "CLOSED"}
    broker = get_broker()
    quote = broker.quote("US.AAPL")
    assert quote.market_open is False and quote.market_state == "CLOSED"
    order = broker.place_order(
        client_id="c-weekend",
        code="US.AAPL",
        side=Side.BUY,
        qty=Decimal(1),
        limit_price=Decimal("191.00"),
    )
    assert order.raw_status == "WAITING_SUBMIT" and order.filled_qty == 0
    # Monday 12:30 HKT = Sunday 23:30 ET: HK at lunch, US in its overnight session (an
    # RTH order does not trade there).
    clock = control.set_clock(at="2026-12-07T04:30:00+00:00", rate=0)
    assert clock["states"] == {"US": "OVERNIGHT", "HK": "REST"}
    assert broker.quote("HK.00700").market_open is False
    assert broker.quote("US.AAPL").market_open is False
    assert control.orders(remark="c-weekend")[0]["status"] == "WAITING_SUBMIT"
    control.set_clock(at="2026-12-07T14:30:00+00:00", rate=0)  # Monday 09:30 ET
    assert broker.quote("US.AAPL").market_open is True
    row = control.orders(remark="c-weekend")[0]
    assert row["status"] == "FILLED_ALL"


def test_clock_runs_and_overrides_pin_a_market(broker_settings):
    control = broker_settings.control
    # 30 simulated minutes per real second from 11:59:59 HKT: the lunch break begins.
    control.set_clock(at="2026-12-07T03:59:59+00:00", rate=1800)
    time.sleep(0.2)
    clock = control.clock()
    assert clock["running"] is True and clock["states"]["HK"] == "REST"
    assert clock["now"] > "2026-12-07T04:00"
    control.set_market_open(market="HK", is_open=True)  # pinned open until the next set_clock
    assert get_broker().quote("HK.00700").market_open is True
    control.set_clock(at=None)  # no clock: the scripted market_open flags again
    assert control.clock()["states"] == {"US": "AFTERNOON", "HK": "AFTERNOON"}


def test_trading_sessions_setting_opens_the_extended_sessions(broker_settings, settings):
    """Which sessions Bronco trades is a setting per market: US pre-market counts as open
    only when TRADING_SESSIONS_US names it."""
    from trading.session import reset_broker

    broker_settings.control.set_clock(at="2026-12-07T13:00:00+00:00", rate=0)  # 08:00 ET
    assert get_broker().quote("US.AAPL").market_state == "PRE_MARKET_BEGIN"
    assert get_broker().quote("US.AAPL").market_open is False
    settings.TRADING_SESSIONS = {"US": "REGULAR,PRE_MARKET", "HK": ""}
    reset_broker()
    assert get_broker().quote("US.AAPL").market_open is True
    settings.TRADING_SESSIONS = {"US": "REGULAR,LUNCH", "HK": ""}
    reset_broker()
    with pytest.raises(ValueError, match="US cannot trade in"):
        get_broker()
