"""A deadline refusal that blames the broker must be true of the broker (issue 17, point 1).

A booked order past its deadline whose cycle cannot get a quote used to leave the book
refunded whatever the reason. Against the real futu SDK and the OpenD simulator: when
Bronco's own request budget refused the quote, or a quote request failed while the broker
answers, the order waits for the next cycle until its hard deadline; only a broker that
really does not answer ends it, and its reason says so."""

import contextlib
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import AuditLog
from orders.models import Order, OrderStatus
from orders.netting import cycles
from orders.pipeline import order_validate
from tests.factories import OrderFactory
from trading.ratelimit import RedisRateLimiter
from trading.session import reset_broker

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

USDT = 10**6


def _booked_past_its_deadline(seconds: float = 1.0) -> Order:
    order = OrderFactory(usdt_amount=500 * USDT)
    assert order_validate(order_id=order.pk) is None
    _deadline_ago(order, seconds)
    return order


def _deadline_ago(order: Order, seconds: float) -> None:
    Order.objects.filter(pk=order.pk).update(deadline=timezone.now() - timedelta(seconds=seconds))


@contextlib.contextmanager
def _broker_out_of_reach(sim) -> Iterator[None]:
    """OpenD refuses every connection (and drops the open ones) for the block."""
    sim.set_accepting(accepting=False)
    reset_broker()
    try:
        yield
    finally:
        sim.set_accepting(accepting=True)
        reset_broker()


def _left(order: Order) -> bool:
    return AuditLog.objects.filter(order_id=order.pk, action="order.left_book").exists()


def test_a_quote_refused_by_brokers_budget_never_refunds_before_the_hard_deadline(
    broker_settings, settings
):
    order = _booked_past_its_deadline()
    # Other workers used the snapshot budget up (Bronco's limiter, as they would).
    limiter = RedisRateLimiter.from_settings(account=f"SIMULATE:{broker_settings.acc_id}")
    while limiter.try_acquire("snapshot") == 0:
        pass

    assert cycles.cycle_open(symbol="AAPL") is None
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING and order.cycle_id is None, order.last_error
    assert not _left(order)  # before: refunded, "the deadline passed ..."

    # The hard deadline still ends it.
    _deadline_ago(order, settings.ORDER_DEADLINE_HARD_EXTRA_SECONDS + 1)
    assert cycles.cycle_open(symbol="AAPL") is None
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING and order.outcome == OrderStatus.FAILED
    assert order.last_error.startswith("the hard deadline passed"), order.last_error
    assert "the broker answered" in order.last_error
    assert int(order.refund_usdt) == 500 * USDT


def test_a_broker_that_does_not_answer_ends_the_order_and_is_named(broker_settings):
    order = _booked_past_its_deadline()
    with _broker_out_of_reach(broker_settings):
        assert cycles.cycle_open(symbol="AAPL") is None
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING and order.outcome == OrderStatus.FAILED
    assert order.last_error.startswith("could not reach the broker before the deadline")
    assert _left(order)


def test_an_order_inside_its_deadline_is_not_touched_and_the_broker_not_asked(broker_settings):
    order = OrderFactory(usdt_amount=500 * USDT)
    assert order_validate(order_id=order.pk) is None
    with _broker_out_of_reach(broker_settings):
        assert cycles.cycle_open(symbol="AAPL") is None
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING and not _left(order)
