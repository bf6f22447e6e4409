"""The compensation scan re-drives stalled orders, and two scans never claim the same one."""

import threading

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from orders import pipeline, scans
from orders.models import Order, OrderStatus
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db


def _stall(*orders, seconds=3600):
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(
        updated_at=timezone.now() - timezone.timedelta(seconds=seconds)
    )


def test_schedule_exists_out_of_the_box():
    task = PeriodicTask.objects.get(task="orders.tasks.compensation_scan")
    assert task.enabled
    assert task.interval is not None


def test_each_open_status_is_redriven_by_its_stage():
    pending = OrderFactory(status=OrderStatus.PENDING)
    executing = OrderFactory(status=OrderStatus.EXECUTING)
    settling = OrderFactory(status=OrderStatus.SETTLING, outcome=OrderStatus.EXECUTED)
    done = OrderFactory(status=OrderStatus.EXECUTED)
    fresh = OrderFactory(status=OrderStatus.PENDING)  # moving along: left alone
    _stall(pending, executing, settling, done)

    claimed = dict(scans.stalled_orders_claim())

    assert claimed == {
        pending.pk: pipeline.Next(pipeline.VALIDATE),
        executing.pk: pipeline.Next(pipeline.POLL),
        settling.pk: pipeline.Next(pipeline.SETTLE),
    }
    assert fresh.pk not in claimed
    # Claimed in this period: the next scan leaves them until they stall again.
    assert dict(scans.stalled_orders_claim()) == {}


@pytest.mark.django_db(transaction=True)
def test_concurrent_scans_claim_disjoint_sets():
    orders = [OrderFactory(status=OrderStatus.EXECUTING) for _ in range(60)]
    _stall(*orders)
    barrier = threading.Barrier(2)
    results: list[list[int]] = []
    lock = threading.Lock()

    def scan() -> None:
        try:
            barrier.wait(timeout=10)
            got = [pk for pk, _ in scans.stalled_orders_claim()]
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
