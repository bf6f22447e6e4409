"""Exactly one live pipeline run per order, with a real worker, beat and the simulator: a
resting order polled while the compensation scan runs every 2 s and broker pushes arrive
keeps polling at the poll interval's rate; when its worker is killed, the scan takes the
order over once its lease ends."""

import os
import signal
import threading
import time
from decimal import Decimal

import pytest

from core.metrics import STAGE_RUNS
from core.money import USDT_UNIT
from orders.models import Order, OrderStatus
from orders.services import order_broker_pushed
from tests.e2e.conftest import wait_until
from trading.broker import BrokerOrder, BrokerStatus, Side

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WINDOW = 30.0  # seconds of observation, as the issue measures it


def _polls() -> float:
    return STAGE_RUNS.value(stage="poll", outcome="ran")


def _resting_order(stack, chain_user) -> Order:
    stack.sim.set_security(code="US.AAPL", price="100.00", fill_mode="none", lot_size=1)
    user = chain_user(2)
    deposit_id = user.deposit_id(user.deposit("AAPL", 500 * USDT_UNIT))
    return wait_until(
        lambda: Order.objects.filter(
            order_type="BUY", onchain_id=deposit_id, status=OrderStatus.EXECUTING
        ).first(),
        timeout=60,
        what="the order to rest at the broker",
    )


def _push_nothing_new(order: Order, times: int, every: float) -> threading.Thread:
    """Broker pushes of the order as it stands (no fill): what every process holding a
    broker session receives, repeatedly, for a resting order."""
    push = BrokerOrder(
        broker_order_id=order.futu_order_id,
        client_id=order.client_id,
        code=order.stock_code,
        side=Side.BUY,
        qty=order.qty,
        price=order.price,
        status=BrokerStatus.WORKING,
        filled_qty=Decimal(0),
        avg_fill_price=None,
        raw_status="SUBMITTED",
    )

    def deliver() -> None:
        for _ in range(times):
            order_broker_pushed(push)
            time.sleep(every)

    thread = threading.Thread(target=deliver)
    thread.start()
    return thread


def test_scans_and_pushes_never_add_a_run_and_a_killed_worker_is_taken_over(
    stack, chain_user, settings
):
    interval = settings.ORDER_POLL_INTERVAL_SECONDS
    worker = stack.start_worker()
    stack.start_beat()  # the compensation scan every 2 s
    stack.start_listener()
    order = _resting_order(stack, chain_user)

    before = _polls()
    pushes = _push_nothing_new(order, times=6, every=WINDOW / 6)
    time.sleep(WINDOW)
    pushes.join(timeout=10)
    rate = (_polls() - before) / WINDOW

    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTING
    assert order.run_gen == 0, "a scan or a push started a second run of a live order"
    # One run polls once per interval (plus the time each poll takes): never more.
    assert 0.3 / interval <= rate <= 1.2 / interval, f"{rate:.2f} polls/s"

    # The worker dies with its tasks (reserved and countdown ones stay unacked in Redis).
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    killed_at = time.monotonic()
    stack.start_worker("worker-2")
    taken_over = wait_until(
        lambda: Order.objects.filter(pk=order.pk, run_gen__gte=1).first(),
        timeout=settings.ORDER_RUN_LEASE_SECONDS + interval + 2 * 2 + 15,
        what="the scan to take over the order whose worker was killed",
    )
    assert taken_over.run_gen == 1, "more than one takeover of a dead run"
    polls_then = _polls()
    wait_until(lambda: _polls() > polls_then + 3, timeout=20, what="polling to resume")
    assert time.monotonic() - killed_at < 60
