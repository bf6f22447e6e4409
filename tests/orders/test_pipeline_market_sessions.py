"""Orders wait in the book through closed markets, driven by the simulator's clock (the
exchange calendars at a simulated time): a weekend deposit joins the first cycle after
Monday's open; an HK deposit at lunch waits for the afternoon; a holiday is waited through;
the deadline never refunds a waiting order, its expiry does; a cancel while waiting refunds
in full with no broker request."""

import pytest
from django.utils import timezone

from core.models import AuditLog
from core.money import USDT_UNIT
from orders.models import Cycle, Order, OrderStatus, Waiting
from orders.services import order_request_cancel
from tests.fixtures.pipeline import chain_deposit as _deposit
from tests.fixtures.pipeline import cycle_step, drive
from tests.orders.test_pipeline import _assert_buy_conserved, _balances, stack  # noqa: F401

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]

SATURDAY = "2026-12-05T17:00:00+00:00"
MONDAY_OPEN_US = "2026-12-07T14:30:00+00:00"  # 09:30 ET
HK_LUNCH = "2026-12-07T04:30:00+00:00"  # 12:30 HKT
HK_AFTERNOON = "2026-12-07T05:00:00+00:00"  # 13:00 HKT
THANKSGIVING = "2026-11-26T16:00:00+00:00"  # 11:00 ET, NYSE closed
FRIDAY_AFTER = "2026-11-27T15:00:00+00:00"  # 10:00 ET, the half day


def _wait_in_book(order: Order, steps: int = 3) -> Order:
    """Drive the order into the book until a cycle finds its market closed, let its deadline
    pass (a closed market outlasts any deadline), and run a few more cycles."""
    drive(order.pk, until=lambda: Order.objects.get(pk=order.pk).waiting_for == Waiting.MARKET)
    _past_deadline(order)
    for _ in range(steps):
        cycle_step(order.symbol)
    return Order.objects.get(pk=order.pk)


def _past_deadline(order: Order) -> None:
    Order.objects.filter(pk=order.pk).update(
        deadline=timezone.now() - timezone.timedelta(seconds=1)
    )


def test_weekend_deposit_waits_past_its_deadline_and_joins_the_first_cycle_after_the_open(
    stack,  # noqa: F811
    chain_user,
):
    contracts, sim = stack
    sim.set_clock(at=SATURDAY, rate=0)
    user = chain_user(2)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 400 * USDT_UNIT)

    order = _wait_in_book(order)

    assert order.status == OrderStatus.PENDING and order.cycle_id is None
    assert order.waiting_for == Waiting.MARKET and order.waiting_since is not None
    assert "waiting for the market" in order.last_error
    assert not Cycle.objects.filter(symbol="AAPL").exists() and sim.orders() == []
    # Marked once, audited once, however many cycles found the market closed.
    assert (
        AuditLog.objects.filter(order_id=order.pk, action="order.waiting_for_market").count() == 1
    )

    sim.set_clock(at=MONDAY_OPEN_US, rate=0)
    cycle_step("AAPL")  # the first cycle after the open takes it
    order = Order.objects.get(pk=order.pk)
    assert order.cycle_id is not None and order.waiting_for == Waiting.NOTHING
    assert order.deadline > timezone.now()  # a fresh deadline to fill in

    order = drive(order.pk)
    assert order.status == OrderStatus.EXECUTED
    _assert_buy_conserved(order)
    assert _balances(user)[1] - tokens_before == order.tokens_minted
    assert _balances(user)[0] == usdt_before - 400 * USDT_UNIT + order.refund_usdt


def test_hk_deposit_at_lunch_waits_for_the_afternoon(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    sim.set_security(code="HK.00700", price="40.00", lot_size=1, fill_mode="full")
    sim.set_clock(at=HK_LUNCH, rate=0)
    user = chain_user(3)
    order = _deposit(user, contracts, "TCEHY", 100 * USDT_UNIT)

    order = _wait_in_book(order)
    assert order.status == OrderStatus.PENDING and order.waiting_for == Waiting.MARKET
    assert not Cycle.objects.filter(symbol="TCEHY").exists()

    sim.set_clock(at=HK_AFTERNOON, rate=0)
    order = drive(order.pk)
    assert order.status == OrderStatus.EXECUTED and order.tokens_minted > 0
    _assert_buy_conserved(order)


def test_holiday_is_waited_through(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    sim.set_clock(at=THANKSGIVING, rate=0)
    user = chain_user(4)
    order = _deposit(user, contracts, "AAPL", 200 * USDT_UNIT)

    order = _wait_in_book(order)
    assert order.status == OrderStatus.PENDING and order.waiting_for == Waiting.MARKET

    sim.set_clock(at=FRIDAY_AFTER, rate=0)
    order = drive(order.pk)
    assert order.status == OrderStatus.EXECUTED
    _assert_buy_conserved(order)


def test_cancel_while_waiting_refunds_in_full_without_a_broker_request(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    sim.set_clock(at=SATURDAY, rate=0)
    user = chain_user(5)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 300 * USDT_UNIT)
    order = _wait_in_book(order)

    cancel = user.request_cancel(int(order.onchain_id))
    order_request_cancel(
        chain_id=contracts.chain_id,
        deposit_id=int(order.onchain_id),
        tx_hash=cancel.tx_hash,
        actor="test",
    )
    order = drive(order.pk)

    assert order.status == OrderStatus.CANCELED
    assert order.refund_usdt == 300 * USDT_UNIT and order.tokens_minted == 0
    assert _balances(user) == (usdt_before, tokens_before)
    assert sim.orders() == [] and not Cycle.objects.filter(symbol="AAPL").exists()


def test_expiry_refunds_a_waiting_order_without_a_broker_request(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    sim.set_clock(at=SATURDAY, rate=0)
    user = chain_user(6)
    usdt_before, _ = _balances(user)
    order = _deposit(user, contracts, "AAPL", 250 * USDT_UNIT)
    order = _wait_in_book(order)
    Order.objects.filter(pk=order.pk).update(expires_at=timezone.now())

    order = drive(order.pk)

    assert order.status == OrderStatus.FAILED
    assert order.last_error == "the order expired while its market was closed"
    assert order.refund_usdt == 250 * USDT_UNIT
    assert _balances(user)[0] == usdt_before
    assert sim.orders() == []


def test_orders_get_the_vaults_default_expiry(stack, chain_user, settings):  # noqa: F811
    """An order that names no expiry lives the vault's defaultExpiry (7 days as deployed,
    read from the contract) less ORDER_EXPIRY_MARGIN_SECONDS; ORDER_DEFAULT_EXPIRY_SECONDS
    is not what decides it."""
    contracts, _ = stack
    settings.ORDER_DEFAULT_EXPIRY_SECONDS = 3600
    settings.ORDER_EXPIRY_MARGIN_SECONDS = 600
    lives = timezone.timedelta(days=7) - timezone.timedelta(seconds=600)
    before = timezone.now()
    order = _deposit(chain_user(7), contracts, "AAPL", 50 * USDT_UNIT)
    assert before + lives <= order.expires_at <= timezone.now() + lives
