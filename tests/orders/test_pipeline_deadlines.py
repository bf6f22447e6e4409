"""Deadlines end in refunds, never in a stuck order: an unfilled order is cancelled at the
broker and refunded; a market that stays closed past the deadline refunds without trading."""

import pytest
from django.utils import timezone

from core.models import Alert, AuditLog
from core.money import USDT_UNIT
from orders import pipeline
from orders.models import Order, OrderStatus
from tests.fixtures.pipeline import chain_deposit as _deposit
from tests.fixtures.pipeline import drive
from tests.orders.test_pipeline import _balances, stack  # noqa: F401

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def _deadline_in(order, seconds):
    Order.objects.filter(pk=order.pk).update(
        deadline=timezone.now() + timezone.timedelta(seconds=seconds)
    )


def test_unfilled_order_is_cancelled_at_the_deadline_and_refunded(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="none")
    user = chain_user(2)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 400 * USDT_UNIT)
    _deadline_in(order, 1.5)

    drive(order.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELED
    assert order.refund_usdt == 400 * USDT_UNIT
    assert order.filled_qty == 0
    assert _balances(user) == (usdt_before, tokens_before)
    (broker_order,) = sim.orders(remark=order.client_id)
    assert broker_order["status"].startswith("CANCELLED")
    assert AuditLog.objects.filter(order=order, action="order.broker_cancel_sent").exists()


def test_market_closed_past_the_deadline_refunds_without_trading(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    sim.set_market_open(market="US", is_open=False)
    try:
        user = chain_user(3)
        usdt_before, _ = _balances(user)
        order = _deposit(user, contracts, "AAPL", 400 * USDT_UNIT)
        _deadline_in(order, 1.0)

        drive(order.pk)
    finally:
        sim.set_market_open(market="US", is_open=True)

    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    assert "closed" in order.last_error.lower()
    assert order.futu_order_id == ""
    assert sim.orders(remark=order.client_id) == []
    assert _balances(user)[0] == usdt_before
    assert pipeline.order_validate(order_id=order.pk) is None  # terminal: nothing more happens


def test_an_order_the_broker_lost_raises_one_alert_and_keeps_polling(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="none")
    user = chain_user(4)
    order = _deposit(user, contracts, "AAPL", 400 * USDT_UNIT)
    drive(order.pk, until=lambda: Order.objects.get(pk=order.pk).status == OrderStatus.EXECUTING)
    sim.reset()  # the broker forgets every order

    for _ in range(3):
        assert pipeline.order_poll(order_id=order.pk) == pipeline.Next(pipeline.POLL, countdown=0.1)

    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTING  # never settled on a guess
    alert = Alert.objects.get(key=f"broker_lost:{order.pk}")
    assert (alert.count, alert.severity, alert.resolved_at) == (3, "critical", None)
    assert AuditLog.objects.filter(order=order, action="order.broker_lost").count() == 1
