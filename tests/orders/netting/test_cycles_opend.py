"""A netting cycle against the real futu SDK and the OpenD simulator: the budgets a cycle
spends. Futu's history listing allows 10 requests per 30 s for the whole account, fewer
than the 15 place requests: a cycle whose order fills at once must learn it from its deals
(OpenD's cache), allocate at once, and leave the broker's fee for later."""

from decimal import Decimal

import pytest

from orders.models import Cycle, CycleStatus, Order, OrderStatus
from orders.netting import cycles
from orders.pipeline import order_validate
from tests.factories import OrderFactory

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

USDT = 10**6


def _book_deposits(amounts):
    for usdt in amounts:
        order = OrderFactory(usdt_amount=usdt * USDT)
        assert order_validate(order_id=order.pk) is None


def test_a_cycle_filled_at_once_allocates_at_placing_without_the_history(broker_settings):
    _book_deposits([500, 700, 900])
    nxt = cycles.cycle_open(symbol="AAPL")
    assert nxt is not None and nxt.step == "place"

    assert cycles.cycle_place(cycle_id=nxt.cycle_id) is None  # no poll needed
    cycle = Cycle.objects.get(pk=nxt.cycle_id)
    assert cycle.status == CycleStatus.ALLOCATED
    assert cycle.filled_units == cycle.broker_units > 0
    assert Order.objects.filter(status=OrderStatus.SETTLING).count() == 3
    history = broker_settings.rate_stats(kind="history_order_list")
    assert history["requests"] == 0, history
    assert broker_settings.rate_stats(kind="place")["requests"] == 1


def test_the_broker_fee_is_read_after_allocation_many_cycles_one_request(broker_settings):
    for symbol, code in (("AAPL", "US.AAPL"), ("TSLA", "US.TSLA"), ("NVDA", "US.NVDA")):
        order = OrderFactory(usdt_amount=1_000 * USDT, symbol=symbol, stock_code=code)
        assert order_validate(order_id=order.pk) is None
        nxt = cycles.cycle_open(symbol=symbol)
        assert cycles.cycle_place(cycle_id=nxt.cycle_id) is None
    # Allocated without the broker's fee: no order_fee_query on the cycles' path.
    assert broker_settings.rate_stats(kind="order_fee")["requests"] == 0
    allocated = Cycle.objects.filter(status=CycleStatus.ALLOCATED)
    assert allocated.count() == 3
    assert all(c.broker_fee_read_at is None and c.broker_fee_usdt == 0 for c in allocated)

    assert cycles.cycles_fees_record() == 3
    assert broker_settings.rate_stats(kind="order_fee")["requests"] == 1
    for cycle in Cycle.objects.all():
        assert cycle.broker_fee_read_at is not None and int(cycle.broker_fee_usdt) > 0
    assert cycles.cycles_fees_record() == 0
    assert broker_settings.rate_stats(kind="order_fee")["requests"] == 1


def test_a_cycle_not_yet_filled_is_polled_then_allocated_from_its_deals(broker_settings):
    broker_settings.set_security(code="US.AAPL", fill_mode="none")
    _book_deposits([800])
    nxt = cycles.cycle_open(symbol="AAPL")
    nxt = cycles.cycle_place(cycle_id=nxt.cycle_id)
    assert nxt is not None and nxt.step == "poll"
    cycle = Cycle.objects.get(pk=nxt.cycle_id)
    broker_settings.fill(order_id=cycle.futu_order_id, qty=None, price=None)

    assert cycles.cycle_poll(cycle_id=cycle.pk) is None
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.ALLOCATED and cycle.price > Decimal(0)
    assert broker_settings.rate_stats(kind="history_order_list")["requests"] == 0
