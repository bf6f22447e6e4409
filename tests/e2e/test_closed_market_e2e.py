"""Everything real, through a closed market: a deposit made on a Saturday (the simulator's
clock) waits in the book while the worker, beat (compensation scan, cycle schedule) and the
listener run past its deadline and several scan periods; nothing refunds it; when the clock
reaches Monday's open it fills and settles, and `reconcile` finds nothing wrong with it."""

import time

import pytest

from chain import selectors as chain_selectors
from chain.models import SettlementTx
from core.money import USDT_UNIT
from ops.reconciliation import reconcile
from orders.models import TERMINAL_STATUSES, Order, OrderStatus, Waiting
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

DEADLINE_SECONDS = 3
SCAN_SECONDS = 2  # the stack's COMPENSATION_SCAN_SECONDS


def test_deposit_in_a_closed_market_survives_the_scans_and_settles_after_the_open(
    stack, chain_user
):
    stack.sim.set_security(code="US.AAPL", price="100.00", fill_mode="full", lot_size=1)
    stack.sim.set_clock(at="2026-12-05T17:00:00+00:00", rate=0)  # Saturday
    stack.env["ORDER_DEADLINE_SECONDS"] = str(DEADLINE_SECONDS)
    stack.start_worker()
    stack.start_beat()
    stack.start_listener()
    user = chain_user(8)
    usdt0 = chain_selectors.usdt_balance(address=user.address)

    deposit_id = user.deposit_id(user.deposit("AAPL", 500 * USDT_UNIT))
    order = wait_until(
        lambda: Order.objects.filter(
            chain_id=stack.contracts.chain_id,
            order_type="BUY",
            onchain_id=deposit_id,
            waiting_for=Waiting.MARKET,
        ).first(),
        timeout=60,
        what="the deposit to wait for the market",
    )
    # Past its deadline and through several compensation-scan periods.
    time.sleep(DEADLINE_SECONDS + 3 * SCAN_SECONDS)
    order.refresh_from_db()
    assert order.deadline is not None and order.deadline.timestamp() < time.time()
    assert order.status == OrderStatus.PENDING and order.waiting_for == Waiting.MARKET
    assert not SettlementTx.objects.filter(order_id=order.pk).exists()  # nothing refunded
    assert stack.sim.orders() == []
    assert chain_selectors.usdt_balance(address=user.address) == usdt0 - 500 * USDT_UNIT

    stack.sim.set_clock(at="2026-12-07T14:30:00+00:00", rate=0)  # Monday 09:30 ET
    order = wait_until(
        lambda: Order.objects.filter(pk=order.pk, status__in=TERMINAL_STATUSES).first(),
        timeout=60,
        what="the deposit to settle after the open",
    )
    assert order.status == OrderStatus.EXECUTED and order.tokens_minted > 0
    assert order.cost_usdt + order.fees_usdt + order.refund_usdt == 500 * USDT_UNIT
    assert chain_selectors.usdt_balance(address=user.address) == (
        usdt0 - order.cost_usdt - order.fees_usdt
    )
    result = reconcile()
    mine = [d for d in result.discrepancies if str(order.pk) in str(d.subject)]
    others = [
        d
        for d in result.discrepancies
        if not (
            d.where == "chain" and (d.subject == "vault USDT" or d.subject.startswith("token "))
        )
    ]
    assert not mine and not others, "\n".join(str(d) for d in mine + others)
