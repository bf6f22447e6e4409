"""One live pipeline run per order (orders.runs): the scan takes over only dead runs, two
scans never claim the same order, a superseded run stops at its next step; a broker push
has its cycle polled only when it is final, and never adds anything otherwise."""

import json
import threading
from decimal import Decimal

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from orders import runs
from orders.models import Cycle, CycleStatus, Order, OrderStatus
from orders.services import order_broker_pushed
from orders.stages import Next, Stage
from tests.factories import OrderFactory
from trading.broker import BrokerOrder, BrokerStatus, Side

pytestmark = pytest.mark.django_db


def _lease(*orders, seconds):
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(
        run_lease_until=timezone.now() + timezone.timedelta(seconds=seconds)
    )


def _claim():
    return {pk: (gen, nxt) for pk, gen, nxt in runs.runs_dead_claim()}


def test_the_scan_takes_over_each_run_driven_order_whose_lease_ran_out_at_its_stage():
    pending = OrderFactory(status=OrderStatus.PENDING)
    settling = OrderFactory(status=OrderStatus.SETTLING, outcome=OrderStatus.EXECUTED)
    done = OrderFactory(status=OrderStatus.EXECUTED)
    alive = OrderFactory(status=OrderStatus.SETTLING)
    # In the book or in a cycle: the cycles drive these, not a run of their own.
    booked = OrderFactory(status=OrderStatus.PENDING, booked_at=timezone.now())
    in_cycle = OrderFactory(status=OrderStatus.EXECUTING)
    _lease(pending, settling, done, booked, in_cycle, seconds=-1)
    _lease(alive, seconds=60)

    claimed = _claim()

    assert claimed == {
        pending.pk: (1, Next(Stage.VALIDATE)),
        settling.pk: (1, Next(Stage.SETTLE)),
    }
    # The new runs hold fresh leases: the next scan leaves them until they stop renewing.
    assert _claim() == {}
    assert Order.objects.get(pk=alive.pk).run_gen == 0


def test_a_superseded_run_stops_at_its_next_step():
    order = OrderFactory(status=OrderStatus.SETTLING)
    assert runs.run_step_begin(order_id=order.pk, gen=0)
    Order.objects.filter(pk=order.pk).update(run_gen=1)  # someone took the order over
    assert not runs.run_step_begin(order_id=order.pk, gen=0)
    assert not runs.run_continue(order_id=order.pk, gen=0, nxt=Next(Stage.SETTLE, 1.0))
    assert runs.run_step_begin(order_id=order.pk, gen=1)


def test_each_step_renews_the_lease_to_cover_its_countdown(settings):
    settings.ORDER_RUN_LEASE_SECONDS = 10
    order = OrderFactory(status=OrderStatus.PENDING)
    before = timezone.now()
    runs.run_continue(order_id=order.pk, gen=0, nxt=Next(Stage.VALIDATE, 100.0))
    lease = Order.objects.get(pk=order.pk).run_lease_until
    assert lease >= before + timezone.timedelta(seconds=110)


@pytest.mark.django_db(transaction=True)
def test_concurrent_scans_claim_disjoint_sets():
    orders = [OrderFactory(status=OrderStatus.SETTLING) for _ in range(60)]
    _lease(*orders, seconds=-1)
    barrier = threading.Barrier(2)
    results: list[list[int]] = []
    lock = threading.Lock()

    def scan() -> None:
        try:
            barrier.wait(timeout=10)
            got = [pk for pk, _, _ in runs.runs_dead_claim()]
            with lock:
                results.append(got)
        finally:
            connection.close()

    threads = [threading.Thread(target=scan) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    first, second = results
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(o.pk for o in orders)
    assert set(Order.objects.values_list("run_gen", flat=True)) == {1}


def _push(cycle, *, filled, status=BrokerStatus.WORKING):
    return BrokerOrder(
        broker_order_id=cycle.futu_order_id or "77",
        client_id=cycle.client_id,
        code=cycle.stock_code,
        side=Side.BUY,
        qty=Decimal(10),
        price=Decimal(100),
        filled_qty=Decimal(filled),
        avg_fill_price=Decimal(100) if filled else None,
        status=status,
        raw_status=status.name,
    )


def _pushed(*pushes):
    """Deliver pushes as the SDK does: on its own thread (which closes its connection)."""

    def deliver() -> None:
        for push in pushes:
            order_broker_pushed(push)

    thread = threading.Thread(target=deliver)
    thread.start()
    thread.join(timeout=30)


def _cycle():
    return Cycle.objects.create(
        symbol="AAPL",
        stock_code="US.AAPL",
        status=CycleStatus.PLACED,
        quote_price=Decimal(100),
        ccy_per_usdt=Decimal(1),
        lot_size=1,
        fee_rate=Decimal(0),
        broker_units=10 * 10**18,
        futu_order_id="77",
    )


def _queued_polls():
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    bodies = [json.loads(raw) for raw in client.lrange("broker", 0, -1)]
    return [b for b in bodies if b["headers"]["task"] == "orders.tasks.cycle_poll"]


@pytest.mark.django_db(transaction=True)
def test_pushes_that_are_not_final_add_nothing_and_a_final_one_polls_the_cycle_once():
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("broker")
    cycle = _cycle()
    _pushed(*[_push(cycle, filled=f) for f in (0, 0, 3, 3, 5, 5)])
    assert _queued_polls() == []
    _pushed(_push(cycle, filled=10, status=BrokerStatus.FILLED))
    assert len(_queued_polls()) == 1
