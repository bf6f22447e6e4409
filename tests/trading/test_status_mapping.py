"""Every Futu order status maps to a Bronco status, through the real SDK too."""

from __future__ import annotations

from decimal import Decimal

import pytest
from futu import OrderStatus

from trading.broker import BrokerStatus
from trading.futu import FUTU_STATUS_MAP, map_status
from trading.session import get_broker

FUTU_STATUSES = sorted(
    value for name, value in vars(OrderStatus).items() if name.isupper() and isinstance(value, str)
)

EXPECTED = {
    "N/A": BrokerStatus.UNKNOWN,
    "UNSUBMITTED": BrokerStatus.SUBMITTING,
    "WAITING_SUBMIT": BrokerStatus.SUBMITTING,
    "SUBMITTING": BrokerStatus.SUBMITTING,
    "SUBMIT_FAILED": BrokerStatus.FAILED,
    "TIMEOUT": BrokerStatus.UNKNOWN,
    "SUBMITTED": BrokerStatus.WORKING,
    "FILLED_PART": BrokerStatus.PARTIALLY_FILLED,
    "FILLED_ALL": BrokerStatus.FILLED,
    "CANCELLING_PART": BrokerStatus.CANCELLING,
    "CANCELLING_ALL": BrokerStatus.CANCELLING,
    "CANCELLED_PART": BrokerStatus.CANCELLED,
    "CANCELLED_ALL": BrokerStatus.CANCELLED,
    "FAILED": BrokerStatus.FAILED,
    # Enabled again from outside at any time: not final; Bronco cancels it explicitly.
    "DISABLED": BrokerStatus.DISABLED,
    "DELETED": BrokerStatus.CANCELLED,
    # Fills reversed after the fact: final, nothing filled (a correction if it was final).
    "FILL_CANCELLED": BrokerStatus.FILL_CANCELLED,
}


def test_every_futu_status_is_mapped():
    assert set(FUTU_STATUSES) == set(FUTU_STATUS_MAP) == set(EXPECTED)
    for raw, expected in EXPECTED.items():
        assert map_status(raw) is expected


def test_final_statuses_are_exactly_those_after_which_no_fill_can_come():
    final = {raw for raw in FUTU_STATUSES if map_status(raw).is_final}
    assert final == {
        "SUBMIT_FAILED",
        "FILLED_ALL",
        "CANCELLED_PART",
        "CANCELLED_ALL",
        "FAILED",
        "DELETED",
        "FILL_CANCELLED",
    }


def test_a_status_futu_adds_later_is_never_final():
    assert map_status("SOMETHING_NEW") is BrokerStatus.UNKNOWN
    assert not map_status("SOMETHING_NEW").is_final


@pytest.mark.broker
@pytest.mark.parametrize("raw", [s for s in FUTU_STATUSES if s != "N/A"])
def test_status_read_through_the_sdk(broker_settings, raw):
    broker_settings.set_security(code="US.TSLA", fill_mode="none")
    broker = get_broker()
    order = broker.place_order(
        client_id=f"st-{raw}",
        code="US.TSLA",
        side="BUY",
        qty=Decimal(1),
        limit_price=Decimal("251"),
    )
    # A closed market: the simulator's clock would move a scripted WAITING_SUBMIT on.
    broker_settings.set_market_open(market="US", is_open=False)
    broker_settings.set_order_status(
        order_id=order.broker_order_id, status=raw, last_err="scripted"
    )
    seen = broker.query_order(broker_order_id=order.broker_order_id)
    assert seen.raw_status == raw
    assert seen.status is EXPECTED[raw]
