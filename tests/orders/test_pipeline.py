"""The pipeline's stages driven in this process against the real OpenD simulator (over the
futu-api SDK) and a real anvil chain: what the user ends up holding on chain is exact.

The stages run in order as their `Next` says, without Celery, so each scenario is quick and
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
from orders.models import Order, OrderStatus
from orders.services import order_request_cancel
from tests.fixtures.pipeline import chain_deposit, chain_redeem, drive, fast_pipeline

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(settings, chain_settings, broker_settings):
    fast_pipeline(settings)
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
    assert order.tokens_minted == int(order.filled_qty * TOKEN_UNIT)


def test_full_fill_mints_shares_and_refunds_the_rest(stack, chain_user):
    contracts, _ = stack
    user = chain_user(2)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT)
    usdt_after_deposit, _ = _balances(user)
    assert usdt_after_deposit == usdt_before - 1_000 * USDT_UNIT

    drive(order.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTED
    assert order.qty == Decimal(9)  # 1000 USDT at a 100.50 limit with fees: 9 whole shares
    assert order.filled_qty == Decimal(9)
    _assert_buy_conserved(order)
    usdt_now, tokens_now = _balances(user)
    assert tokens_now - tokens_before == 9 * TOKEN_UNIT
    assert usdt_now - usdt_after_deposit == order.refund_usdt
    assert order.refund_usdt > 0
    assert chain_selectors.is_settled(kind="deposit", onchain_id=int(order.onchain_id))
    actions = list(AuditLog.objects.filter(order=order).values_list("action", flat=True))
    for step in (
        "order.created",
        "order.validated",
        "order.placed",
        "order.finalized",
        "order.settled",
    ):
        assert step in actions
    scrape = Client().get("/metrics").content.decode()
    for stage in ("validate", "place", "execute", "settle", "end_to_end"):
        assert f'bronco_stage_latency_seconds_count{{stage="{stage}"}}' in scrape


def test_rejection_refunds_everything(stack, chain_user):
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="reject")
    user = chain_user(3)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 500 * USDT_UNIT)

    drive(order.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    assert order.refund_usdt == 500 * USDT_UNIT
    assert "reject" in order.last_error.lower()
    assert _balances(user) == (usdt_before, tokens_before)


def test_partial_fill_then_deadline_settles_the_filled_part(stack, chain_user, settings):
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="partial", partial_ratio="0.5")
    user = chain_user(4)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT)
    Order.objects.filter(pk=order.pk).update(
        deadline=timezone.now() + timezone.timedelta(seconds=2)
    )

    drive(order.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTED
    assert Decimal(0) < order.filled_qty < order.qty
    _assert_buy_conserved(order)
    usdt_now, tokens_now = _balances(user)
    assert tokens_now - tokens_before == order.tokens_minted
    assert usdt_before - usdt_now == order.cost_usdt + order.fees_usdt
    assert AuditLog.objects.filter(order=order, action="order.broker_cancel_sent").exists()


def test_cancel_before_fill_refunds_everything(stack, chain_user):
    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="none")
    user = chain_user(5)
    usdt_before, tokens_before = _balances(user)
    order = _deposit(user, contracts, "AAPL", 300 * USDT_UNIT)
    # Placed and working at the broker, then the user cancels on chain.
    drive(order.pk, until=lambda: Order.objects.get(pk=order.pk).status == OrderStatus.EXECUTING)
    cancel = user.request_cancel(int(order.onchain_id))
    order_request_cancel(
        chain_id=contracts.chain_id,
        deposit_id=int(order.onchain_id),
        tx_hash=cancel.tx_hash,
        actor="test",
    )

    drive(order.pk, first=pipeline.POLL)

    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELED
    assert order.filled_qty == 0
    assert order.refund_usdt == 300 * USDT_UNIT
    assert _balances(user) == (usdt_before, tokens_before)
    assert sim.orders(remark=order.client_id)[0]["status"].startswith("CANCELLED")


def test_deposit_too_small_is_refused_and_refunded(stack, chain_user):
    contracts, _ = stack
    user = chain_user(6)
    usdt_before, _ = _balances(user)
    order = _deposit(user, contracts, "AAPL", 50 * USDT_UNIT)  # one share costs ~100.5

    drive(order.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    assert "does not buy one lot" in order.last_error
    assert _balances(user)[0] == usdt_before


def test_redeem_pays_proceeds_and_returns_unsold_fraction(stack, chain_user):
    contracts, sim = stack
    user = chain_user(7)
    buy = _deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT)
    drive(buy.pk)
    usdt_before, tokens_before = _balances(user)
    assert tokens_before >= 9 * TOKEN_UNIT

    sim.set_price(code="US.AAPL", price="110.00")
    redeem_units = 5 * TOKEN_UNIT + TOKEN_UNIT // 2  # 5.5 shares: 5 sell, 0.5 comes back
    order = chain_redeem(user, contracts, "AAPL", redeem_units)
    drive(order.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTED
    assert order.filled_qty == Decimal(5)
    assert order.tokens_returned == TOKEN_UNIT // 2
    assert order.payout_usdt + order.fees_usdt == order.cost_usdt
    assert order.payout_usdt > 500 * USDT_UNIT
    usdt_now, tokens_now = _balances(user)
    assert usdt_now - usdt_before == order.payout_usdt
    assert tokens_before - tokens_now == 5 * TOKEN_UNIT


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


def test_broker_push_drives_the_order_through_the_poll_path(stack, chain_user):
    """A fill pushed by OpenD enqueues a poll (the same path as polling) that a real worker,
    taking it from Redis, runs to settlement."""
    from celery.contrib.testing.worker import start_worker

    from bronco_project.celery import app

    contracts, sim = stack
    sim.set_security(code="US.AAPL", fill_mode="none")
    user = chain_user(9)
    order = _deposit(user, contracts, "AAPL", 1_000 * USDT_UNIT)
    drive(order.pk, until=lambda: Order.objects.get(pk=order.pk).status == OrderStatus.EXECUTING)
    broker_id = Order.objects.get(pk=order.pk).futu_order_id

    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        shutdown_timeout=10,
        queues=["default", "broker", "chain"],
    ):
        sim.fill(order_id=broker_id)  # no poll scheduled: only the push can move it
        deadline = time.monotonic() + 30
        while Order.objects.get(pk=order.pk).status != OrderStatus.EXECUTED:
            assert time.monotonic() < deadline, "the push did not drive the order"
            time.sleep(0.1)

    order.refresh_from_db()
    assert order.filled_qty == order.qty
    _assert_buy_conserved(order)
