"""The pipeline and its netting cycles driven in this process against the real OpenD
simulator (over the futu-api SDK) and a real anvil chain: what the user ends up holding on
chain is exact.

The steps run in order as they ask, without Celery, so each scenario is quick and
deterministic; tests/e2e runs the same flows through a real worker and the listener.
"""

import time
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from chain import selectors as chain_selectors
from core.models import AuditLog
from core.money import TOKEN_UNIT, USDT_UNIT
from orders import pipeline
from orders.models import Cycle, CycleStatus, HouseInventory, Order, OrderStatus
from tests.fixtures.pipeline import (
    cancel_in_a_placed_cycle,
    chain_deposit,
    chain_redeem,
    drive,
    fast_pipeline,
)

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(settings, chain_settings, broker_settings):
    fast_pipeline(settings)
    settings.NETTING_CYCLE_TIMEOUT_SECONDS = 1.0
    broker_settings.set_security(code="US.AAPL", price="100.00", fill_mode="full", lot_size=1)
    return chain_settings, broker_settings


_deposit = chain_deposit


def _balances(user, symbol="AAPL"):
    return (
        chain_selectors.usdt_balance(address=user.address),
        chain_selectors.token_balance(symbol=symbol, address=user.address),
    )


def _assert_buy_conserved(order: Order):
    assert order.cost_usdt + order.fees_usdt + order.refund_usdt == order.usdt_amount
    assert order.tokens_minted == sum(a.token_units for a in order.allocations.all())


def _cycle_of(order: Order) -> Cycle:
    return Cycle.objects.get(pk=order.allocations.order_by("-pk").first().cycle_id)


def test_full_fill_mints_fractional_shares_at_the_cycle_price(stack, chain_user):
    contracts, sim = stack
    user = chain_user(2)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT)
    usdt_after_deposit, _ = _balances(user)
    assert usdt_after_deposit == usdt_before - 1_000 * USDT_UNIT

    order = drive(order.pk)

    assert order.status == OrderStatus.EXECUTED
    _assert_buy_conserved(order)
    cycle = _cycle_of(order)
    assert cycle.price == order.avg_fill_price  # the cycle's one price
    assert Decimal(sim.orders(remark=cycle.client_id)[0]["qty"]) == 10
    # 1,000 USDT less Bronco's 0.1 % fee at the fill price: about 9.99 shares, fractional.
    assert 9 * TOKEN_UNIT < order.tokens_minted < 10 * TOKEN_UNIT
    assert order.refund_usdt < 10  # rounding dust only
    usdt_now, tokens_now = _balances(user)
    assert tokens_now - tokens_before == order.tokens_minted
    assert usdt_now - usdt_after_deposit == order.refund_usdt
    assert chain_selectors.is_settled(kind="deposit", onchain_id=int(order.onchain_id))
    assert HouseInventory.objects.get(symbol="AAPL").token_units == 10 * TOKEN_UNIT - (
        order.tokens_minted
    )
    actions = list(AuditLog.objects.filter(order=order).values_list("action", flat=True))
    for step in (
        "order.created",
        "order.booked",
        "order.joined_cycle",
        "order.finalized",
        "order.settled",
    ):
        assert step in actions
    scrape = Client().get("/metrics").content.decode()
    for stage in ("validate", "execute", "settle", "end_to_end"):
        assert f'bronco_stage_latency_seconds_count{{stage="{stage}"}}' in scrape


def test_a_broker_that_rejects_until_the_deadline_refunds_everything(stack, chain_user):
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="reject")
    user = chain_user(3)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 500 * USDT_UNIT)
    Order.objects.filter(pk=order.pk).update(
        deadline=timezone.now() + timezone.timedelta(seconds=2)
    )

    order = drive(order.pk)

    assert order.status == OrderStatus.FAILED
    assert order.refund_usdt == 500 * USDT_UNIT
    assert "deadline" in order.last_error
    assert "reject" in Cycle.objects.filter(symbol="AAPL").first().last_error.lower()
    assert _balances(user) == (usdt_before, tokens_before)


def test_partial_fills_carry_over_until_the_deadline_settles_the_filled_part(stack, chain_user):
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="partial", partial_ratio="0.5")
    user = chain_user(4)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT)
    Order.objects.filter(pk=order.pk).update(
        deadline=timezone.now() + timezone.timedelta(seconds=4)
    )

    order = drive(order.pk)

    assert order.status == OrderStatus.EXECUTED
    assert 0 < order.tokens_minted
    assert order.allocations.count() >= 2  # carried over from cycle to cycle
    assert order.refund_usdt > 10 * USDT_UNIT  # what had not filled by the deadline
    _assert_buy_conserved(order)
    usdt_now, tokens_now = _balances(user)
    assert tokens_now - tokens_before == order.tokens_minted
    assert usdt_before - usdt_now == order.cost_usdt + order.fees_usdt
    assert Cycle.objects.filter(symbol="AAPL", cancel_sent_at__isnull=False).exists()


def test_cancel_while_in_a_cycle_refunds_what_did_not_fill(stack, chain_user):
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="none")
    user = chain_user(5)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 300 * USDT_UNIT)
    # In a cycle whose broker order works at the broker, then the user cancels on chain.
    order = cancel_in_a_placed_cycle(user, contracts, order)

    assert order.status == OrderStatus.CANCELED
    assert order.tokens_minted == 0
    assert order.refund_usdt == 300 * USDT_UNIT
    assert _balances(user) == (usdt_before, tokens_before)
    cycle = Cycle.objects.filter(symbol="AAPL").first()
    assert sim.orders(remark=cycle.client_id)[0]["status"].startswith("CANCELLED")


def test_a_deposit_worth_a_fraction_of_a_share_buys_that_fraction(stack, chain_user):
    contracts, _ = stack
    user = chain_user(6)
    _, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 20 * USDT_UNIT)  # one share costs ~100

    order = drive(order.pk)

    assert order.status == OrderStatus.EXECUTED
    assert 0 < order.tokens_minted < TOKEN_UNIT // 4
    _assert_buy_conserved(order)
    assert _balances(user)[1] - tokens_before == order.tokens_minted
    assert HouseInventory.objects.get(symbol="AAPL").token_units > TOKEN_UNIT // 2


def test_a_redeem_is_crossed_and_paid_at_the_cycle_price(stack, chain_user):
    contracts, sim = stack
    user = chain_user(7)
    buy = _deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT)
    drive(buy.pk)
    usdt_before, tokens_before = _balances(user)
    assert tokens_before >= 9 * TOKEN_UNIT

    sim.set_price(code="US.AAPL", price="110.00")
    redeem_units = 5 * TOKEN_UNIT + TOKEN_UNIT // 2  # 5.5 shares: fractions sell too
    order = chain_redeem(user, contracts, "AAPL", redeem_units)
    order = drive(order.pk)

    assert order.status == OrderStatus.EXECUTED
    assert order.tokens_returned == 0
    assert order.payout_usdt + order.fees_usdt == order.cost_usdt
    assert order.payout_usdt > 550 * USDT_UNIT
    usdt_now, tokens_now = _balances(user)
    assert usdt_now - usdt_before == order.payout_usdt
    assert tokens_before - tokens_now == redeem_units
    # Inventory above its cap (2 lots) was sold in whole shares: what is left is below it.
    assert HouseInventory.objects.get(symbol="AAPL").token_units <= 2 * TOKEN_UNIT


def test_second_settle_run_pays_nothing_twice(stack, chain_user):
    contracts, _ = stack
    user = chain_user(8)
    order = _deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT)
    drive(order.pk)
    order.refresh_from_db()
    usdt_now, tokens_now = _balances(user)
    # A redelivered settle task, and one for an order reset behind our back, do nothing.
    assert pipeline.order_settle(order_id=order.pk) is None
    assert _balances(user) == (usdt_now, tokens_now)


def test_a_broker_push_has_the_cycle_polled_and_the_order_settled(stack, chain_user):
    """A fill pushed by OpenD has the cycle polled now (the same path as polling); a real
    worker, taking the tasks from Redis, runs it to settlement."""
    from celery.contrib.testing.worker import start_worker

    from bronco_project.celery import app

    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="none")
    user = chain_user(9)
    order = _deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT)
    drive(
        order.pk,
        until=lambda: Cycle.objects.filter(symbol="AAPL", status=CycleStatus.PLACED).exists(),
    )
    cycle = Cycle.objects.get(symbol="AAPL", status=CycleStatus.PLACED)
    # Tasks earlier tests of the session queued (no worker ran them; their rows are gone)
    # would come first: CI saw this worker spend the whole bound on such a backlog.
    app.control.purge()

    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        shutdown_timeout=10,
        queues=["default", "broker", "chain"],
    ):
        sim.fill(order_id=cycle.futu_order_id)  # no poll scheduled: only the push can move it
        deadline = time.monotonic() + 30
        while Order.objects.get(pk=order.pk).status != OrderStatus.EXECUTED:
            assert time.monotonic() < deadline, "the push did not drive the order"
            time.sleep(0.1)

    order.refresh_from_db()
    _assert_buy_conserved(order)
