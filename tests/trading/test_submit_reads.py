"""A read before placing never rejects (issue 13, point 7): the remark look-up and the
buying-power check of a retry that fail with a text no error class knows leave the outcome
unknown (BrokerUnavailable, retried), never REJECTED. Otherwise an order an earlier attempt
placed would be taken for refused, its cycle allocated with nothing filled and its orders
placed again by the next cycle: a doubled order. Against Bronco's fake broker."""

from __future__ import annotations

from decimal import Decimal

import pytest

from trading import order_records
from trading.exceptions import BrokerRejected, BrokerUnavailable
from trading.models import BrokerOrderRecord

pytestmark = pytest.mark.django_db(transaction=True)


def _submit(client_id: str):  # type: ignore[no-untyped-def]
    return order_records.broker_order_submit(
        client_id=client_id, code="US.AAPL", side="BUY", qty=Decimal(2), limit_price=Decimal(191)
    )


def test_an_unknown_error_on_the_look_up_of_a_retry_is_never_a_rejection(fake_broker):
    fake_broker.set_quote("US.AAPL", "190", lot_size=1)
    # The first attempt reaches the broker; its answer is lost.
    fake_broker.fail_next("place_order", BrokerUnavailable("Connection lost"), after_accept=True)
    with pytest.raises(BrokerUnavailable):
        _submit("reads-1")
    assert len(fake_broker.calls_to("place_order")) == 1
    # The retry's look-up fails with a text the adapter could not place (BrokerRejected).
    fake_broker.fail_next("find_by_remark", BrokerRejected("网络错误：请求未完成"))
    with pytest.raises(BrokerUnavailable):
        _submit("reads-1")
    assert BrokerOrderRecord.objects.get(client_id="reads-1").status != "REJECTED"
    # The next retry adopts the first attempt's order: one order at the broker, ever.
    state = _submit("reads-1")
    assert state.order.client_id == "reads-1"
    assert len(fake_broker.calls_to("place_order")) == 1


def test_an_unknown_error_on_the_buying_power_read_is_never_a_rejection(fake_broker, settings):
    settings.TRADING_CHECK_BUYING_POWER = True
    fake_broker.set_quote("US.AAPL", "190", lot_size=1)
    fake_broker.fail_next("funds", BrokerRejected("unexpected answer"))
    with pytest.raises(BrokerUnavailable):
        _submit("reads-2")
    assert BrokerOrderRecord.objects.get(client_id="reads-2").status != "REJECTED"
    assert fake_broker.calls_to("place_order") == []
    assert _submit("reads-2").order.client_id == "reads-2"
    assert len(fake_broker.calls_to("place_order")) == 1
