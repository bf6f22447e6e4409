"""Lost work is re-driven in seconds and never refunded (issue 17, point 1), with a Redis of
the test's own, a real worker and beat: orders whose validate tasks were queued when Redis was
wiped are taken over as soon as a worker can work again — not when their (here one-minute)
leases run out — and the deadline that passed during the fault does not refund them."""

import time
import uuid

import pytest
from django.utils import timezone

from core.models import AuditLog
from devtools.processes import free_port
from orders import runs
from orders.models import Order, OrderStatus
from orders.stages import Next, Stage
from orders.tasks import ping
from tests.factories import OrderFactory
from tests.fixtures.processes import (
    bronco_process,
    celery_worker_argv,
    subprocess_env,
    wait_until,
)
from tests.reliability.conftest import beat_argv

pytestmark = [pytest.mark.django_db(transaction=True)]

ORDERS = 20
GOAL_SECONDS = 10.0


def test_orders_lost_with_a_wiped_redis_are_redriven_in_seconds_and_none_refunded(
    own_redis, settings
):
    env = subprocess_env(
        ORDER_RUN_LEASE_SECONDS=60,  # a lease alone would re-drive them a minute later
        COMPENSATION_SCAN_SECONDS=1,
        NETTING_CYCLE_SECONDS=1,
        FUTU_OPEND_HOST="127.0.0.1",
        FUTU_OPEND_PORT=free_port(),  # no broker: the booked orders wait in their book
    )
    worker_argv = celery_worker_argv(concurrency=3)
    with bronco_process("redrive-beat", beat_argv(), env):
        with bronco_process("redrive-worker-1", worker_argv, env):
            # The system works: the scan has run against this Redis.
            wait_until(
                lambda: own_redis.client().exists("bronco:broker-epoch"),
                timeout=60,
                what="the first compensation scan",
            )
        # The workers are down; new orders' first tasks wait in Redis.
        lease = timezone.now() + timezone.timedelta(seconds=60)
        deadline = timezone.now() + timezone.timedelta(seconds=3)
        orders = OrderFactory.create_batch(
            ORDERS, status=OrderStatus.PENDING, run_lease_until=lease, deadline=deadline
        )
        runs.run_enqueue_many(gens={o.pk: 0 for o in orders}, nxt=Next(Stage.VALIDATE))
        assert own_redis.client().llen("default") >= ORDERS
        own_redis.wipe()  # Redis lost everything: the queued work is gone
        time.sleep(max((deadline - timezone.now()).total_seconds(), 0) + 0.5)

        with bronco_process("redrive-worker-2", worker_argv, env):
            token = uuid.uuid4().hex
            assert ping.apply_async(args=[token]).get(timeout=60)["token"] == token
            ready = time.monotonic()
            ids = [o.pk for o in orders]
            wait_until(
                lambda: Order.objects.filter(pk__in=ids, booked_at__isnull=False).count() == ORDERS,
                timeout=30,
                what="every lost order to be re-driven and booked",
            )
            took = time.monotonic() - ready
            print(f"re-driven and booked {took:.1f} s after a worker could work")
            assert took < GOAL_SECONDS
            # Cycles of the symbol run (every second) while the orders wait for a broker:
            # the deadline that passed during the fault refunds none of them.
            time.sleep(4)
            assert not Order.objects.filter(pk__in=ids).exclude(status=OrderStatus.PENDING)
            assert not AuditLog.objects.filter(order_id__in=ids, action="order.left_book")
            extended = AuditLog.objects.filter(
                order_id__in=ids, action="order.deadline_extended"
            ).count()
            assert extended >= ORDERS
