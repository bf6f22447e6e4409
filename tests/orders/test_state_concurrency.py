"""The optimistic lock under real concurrency: two threads, two database connections."""

import threading

import pytest
from django.db import connection

from core.models import AuditLog
from orders.exceptions import StaleOrderVersion
from orders.models import Order, OrderStatus
from orders.state import order_transition
from tests.factories import OrderFactory


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("attempt", range(5))
def test_two_workers_race_one_transition(attempt):
    order = OrderFactory()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        try:
            mine = Order.objects.get(pk=order.pk)  # each thread: its own connection
            barrier.wait(timeout=10)
            order_transition(
                order=mine, to_status=OrderStatus.EXECUTING, actor=name, action="order.placed"
            )
            result = "won"
        except StaleOrderVersion:
            result = "stale"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert sorted(outcomes) == ["stale", "won"]
    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTING
    assert order.version == 1
    assert AuditLog.objects.filter(order=order, action="order.placed").count() == 1
