"""An order push can say FILLED before Futu's deal list holds the fills (the push and the
deal list are separate). The sync then takes the fills from the history, never "nothing
filled": the 10,000-order chaos run allocated a cycle with 0 shares whose broker order had
filled 83, and a correction case opened 20 s later. Against Bronco's fake broker."""

from __future__ import annotations

from decimal import Decimal

import pytest

from trading import order_records
from trading.broker import BrokerStatus
from trading.models import BrokerFillCorrection, BrokerOrderRecord

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("part", [False, True], ids=["filled", "cancelled after a part"])
def test_a_fill_pushed_before_its_deals_are_listed_is_read_from_the_history(fake_broker, part):
    fake_broker.set_quote("US.TSLA", "250", lot_size=1)
    fake_broker.fill_crossing_orders = False
    state = order_records.broker_order_submit(
        client_id="lag-1", code="US.TSLA", side="BUY", qty=Decimal(83), limit_price=Decimal(251)
    )
    broker_id = state.order.broker_order_id
    # Filled (or a part filled, then cancelled): the push arrives, the deal list lags.
    fake_broker.fill(broker_id, qty=40 if part else None, price="250", deal_listed=False)
    if part:
        fake_broker.cancel(broker_id)
    record = BrokerOrderRecord.objects.get(client_id="lag-1")
    assert record.status == ("CANCELLED" if part else "FILLED")  # from the push
    assert record.filled_qty == 0 and record.final_at is None
    assert fake_broker.deals(broker_order_id=broker_id) == []

    synced = order_records.broker_order_sync(client_id="lag-1", fee=False)
    expected = Decimal(40 if part else 83)
    assert synced.order.status == (BrokerStatus.CANCELLED if part else BrokerStatus.FILLED)
    assert synced.order.filled_qty == expected
    assert synced.order.avg_fill_price == Decimal(250)
    record.refresh_from_db()
    assert record.final_at is not None and record.filled_qty == expected
    history = [
        c for c in fake_broker.calls if c.name == "query_order" and c.kwargs["include_history"]
    ]
    assert len(history) == 1  # the fills came from the history, once

    # The deals are listed later: they agree, no correction case, no more history reads.
    fake_broker.list_held_deals()
    order_records.broker_order_sync(client_id="lag-1", fee=False)
    assert not BrokerFillCorrection.objects.exists()
    assert len([c for c in fake_broker.calls if c.kwargs.get("include_history")]) == 1
