"""Deadlines end in refunds, never in a stuck order: a deposit whose cycles never fill is
settled at its deadline with everything refunded (each cycle's broker order cancelled after
its timeout); a market that stays closed past the order's expiry refunds without a broker order;
a broker order the broker lost is alerted once and never settled on a guess."""

import pytest
from django.utils import timezone

from core.models import Alert
from core.money import USDT_UNIT
from orders import pipeline
from orders.models import Cycle, CycleStatus, Order, OrderStatus
from orders.netting import cycles
from tests.fixtures.pipeline import chain_deposit as _deposit
from tests.fixtures.pipeline import drive
from tests.orders.test_pipeline import _balances, stack  # noqa: F401

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def _deadline_in(order, seconds):
    Order.objects.filter(pk=order.pk).update(
        deadline=timezone.now() + timezone.timedelta(seconds=seconds)
    )


def test_unfilled_deposit_is_refunded_at_the_deadline(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="none")
    user = chain_user(2)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 400 * USDT_UNIT)
    _deadline_in(order, 2.5)

    order = drive(order.pk)

    assert order.status == OrderStatus.FAILED
    assert "deadline" in order.last_error
    assert order.refund_usdt == 400 * USDT_UNIT and order.tokens_minted == 0
    assert _balances(user) == (usdt_before, tokens_before)
    for cycle in Cycle.objects.filter(symbol="AAPL"):
        (broker_order,) = sim.orders(remark=cycle.client_id)
        assert broker_order["status"].startswith("CANCELLED")
        assert cycle.cancel_sent_at is not None


def test_market_closed_past_the_expiry_refunds_without_trading(stack, chain_user):  # noqa: F811
    """A closed market outlives the deadline (the order waits: test_pipeline_market_sessions);
    the order's expiry ends it, refunded in full without a broker order."""
    contracts, sim = stack
    sim.set_market_open(market="US", is_open=False)
    try:
        user = chain_user(3)
        usdt_before, _ = _balances(user)
        order = _deposit(user, contracts, "AAPL", 400 * USDT_UNIT)
        drive(order.pk, until=lambda: Order.objects.get(pk=order.pk).waiting_for == "market")
        _deadline_in(order, -1)
        Order.objects.filter(pk=order.pk).update(
            expires_at=timezone.now() + timezone.timedelta(seconds=1.0)
        )

        order = drive(order.pk)
    finally:
        sim.set_market_open(market="US", is_open=True)

    assert order.status == OrderStatus.FAILED
    assert order.last_error == "the order expired while its market was closed"
    assert not Cycle.objects.filter(symbol="AAPL").exists()  # no cycle, no broker order
    assert sim.orders() == []
    assert _balances(user)[0] == usdt_before
    assert pipeline.order_validate(order_id=order.pk) is None  # terminal: nothing more happens


def test_a_cycle_order_the_broker_lost_raises_one_alert_and_keeps_polling(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="none")
    user = chain_user(4)
    order = _deposit(user, contracts, "AAPL", 400 * USDT_UNIT)
    drive(
        order.pk,
        until=lambda: Cycle.objects.filter(symbol="AAPL", status=CycleStatus.PLACED).exists(),
    )
    cycle = Cycle.objects.get(symbol="AAPL", status=CycleStatus.PLACED)
    sim.reset()  # the broker forgets every order

    for _ in range(3):
        nxt = cycles.cycle_poll(cycle_id=cycle.pk)
        assert nxt is not None and nxt.step == "poll"

    order.refresh_from_db()
    cycle.refresh_from_db()
    assert order.status == OrderStatus.EXECUTING  # never settled on a guess
    assert cycle.status == CycleStatus.PLACED
    alert = Alert.objects.get(key=f"broker_lost_cycle:{cycle.pk}")
    assert (alert.count, alert.severity, alert.resolved_at) == (3, "critical", None)
