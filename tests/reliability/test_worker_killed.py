"""A worker killed with kill -9 (its prefork pool with it) while it holds runs' tasks —
reserved, waiting out their countdown, unacknowledged in Redis until the visibility timeout
(an hour) — costs seconds: the runs' leases (`ORDER_RUN_LEASE_SECONDS`, 8 s by default) run
out and the scan, every 2 s, takes the orders over (issue 17, point 1)."""

import os
import signal
import time
import uuid

import pytest

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

ORDERS = 10


def test_runs_held_by_a_killed_worker_are_taken_over_within_a_lease(own_redis, settings):
    env = subprocess_env(COMPENSATION_SCAN_SECONDS=2, NETTING_CYCLE_SECONDS=60)
    lease_seconds = settings.ORDER_RUN_LEASE_SECONDS
    worker_argv = celery_worker_argv(concurrency=2, queues="default")
    with bronco_process("killed-beat", beat_argv(), env):
        with bronco_process("killed-worker-1", worker_argv, env) as worker:
            token = uuid.uuid4().hex
            assert ping.apply_async(args=[token]).get(timeout=60)["token"] == token
            orders = OrderFactory.create_batch(
                ORDERS, status=OrderStatus.PENDING, run_lease_until=runs.initial_lease()
            )
            # Each first step waits out a countdown in the worker: held, unacknowledged.
            for order in orders:
                runs.run_continue(order_id=order.pk, gen=0, nxt=Next(Stage.VALIDATE, 3.0))
            wait_until(
                lambda: not own_redis.client().llen("default"),
                timeout=10,
                what="the worker to reserve every task",
            )
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        killed = time.monotonic()
        assert own_redis.client().hlen("unacked") >= ORDERS  # lost for an hour in Redis
        with bronco_process("killed-worker-2", worker_argv, env):
            ids = [o.pk for o in orders]
            wait_until(
                lambda: Order.objects.filter(pk__in=ids, booked_at__isnull=False).count() == ORDERS,
                timeout=60,
                what="the killed worker's runs to be taken over",
            )
            took = time.monotonic() - killed
    leases = 3.0 + lease_seconds  # the countdown the lease covered, then the lease
    print(f"taken over and booked {took:.1f} s after kill -9 (countdown + lease: {leases} s)")
    assert took < leases + 2 * 2 + 5  # two scans and a worker's start on a busy machine
    assert all(o.run_gen >= 1 for o in Order.objects.filter(pk__in=ids))
