"""Exactly one live chain of work per order and per cycle, with a real worker, beat and the
simulator: a cycle whose broker order rests is polled at the poll interval's rate while the
compensation scan and the cycle scheduler run every 1-2 s and broker pushes arrive; when its
worker is killed, the scheduler takes the cycle over once its lease ends."""

import os
import signal
import threading
import time
from decimal import Decimal

import pytest

from core.metrics import STAGE_RUNS
from core.money import USDT_UNIT
from orders.models import Cycle, CycleStatus, Order, OrderStatus
from orders.services import order_broker_pushed
from tests.e2e.conftest import wait_until
from trading.broker import BrokerOrder, BrokerStatus, Side

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WINDOW = 30.0  # seconds of observation, as the issue measures it


def _polls() -> float:
    return STAGE_RUNS.value(stage="cycle_poll", outcome="ran")


def _resting_cycle(stack, chain_user) -> tuple[Order, Cycle]:
    stack.sim.set_security(code="US.AAPL", price="100.00", fill_mode="none", lot_size=1)
    user = chain_user(2)
    deposit_id = user.deposit_id(user.deposit("AAPL", 500 * USDT_UNIT))
    order = wait_until(
        lambda: Order.objects.filter(
            order_type="BUY", onchain_id=deposit_id, status=OrderStatus.EXECUTING
        ).first(),
        timeout=60,
        what="the order to join a cycle",
    )
    cycle = wait_until(
        lambda: Cycle.objects.filter(pk=order.cycle_id, status=CycleStatus.PLACED).first(),
        timeout=30,
        what="the cycle's broker order to rest at the broker",
    )
    return order, cycle


def _push_nothing_final(cycle: Cycle, times: int, every: float) -> threading.Thread:
    """Broker pushes of the cycle's order as it stands (working, nothing final): what every
    process holding a broker session receives, repeatedly, for a resting order."""
    push = BrokerOrder(
        broker_order_id=cycle.futu_order_id,
        client_id=cycle.client_id,
        code=cycle.stock_code,
        side=Side.BUY,
        qty=Decimal(5),
        price=cycle.limit_price,
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


def test_scans_and_pushes_never_add_polls_and_a_killed_worker_is_taken_over(
    stack, chain_user, settings
):
    interval = settings.ORDER_POLL_INTERVAL_SECONDS
    stack.env["NETTING_CYCLE_TIMEOUT_SECONDS"] = "600"  # the broker order keeps resting
    worker = stack.start_worker()
    stack.start_beat()  # the compensation scan every 2 s, the cycle scheduler every 1 s
    stack.start_listener()
    order, cycle = _resting_cycle(stack, chain_user)

    before = _polls()
    pushes = _push_nothing_final(cycle, times=6, every=WINDOW / 6)
    time.sleep(WINDOW)
    pushes.join(timeout=10)
    rate = (_polls() - before) / WINDOW

    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTING and order.cycle_id == cycle.pk
    assert order.run_gen == 0, "a scan or a push started a run of an order in a cycle"
    assert Cycle.objects.filter(symbol="AAPL").count() == 1, "a second cycle was opened"
    # One chain polls once per interval (plus the time each poll takes): never more.
    assert 0.3 / interval <= rate <= 1.2 / interval, f"{rate:.2f} polls/s"

    # The worker dies with its tasks (reserved and countdown ones stay unacked in Redis).
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    killed_at = time.monotonic()
    stack.start_worker("worker-2")
    polls_then = _polls()
    wait_until(
        lambda: _polls() > polls_then + 3,
        timeout=settings.NETTING_CYCLE_LEASE_SECONDS + interval + 2 + 30,
        what="the scheduler to take over the cycle whose worker was killed",
    )
    assert time.monotonic() - killed_at < 60
    # Taken over once: polling goes on at one chain's rate.
    start, t0 = _polls(), time.monotonic()
    time.sleep(10)
    assert (_polls() - start) / (time.monotonic() - t0) <= 1.2 / interval
