"""PostgreSQL going away does no harm (issue 17): the machine's PostgreSQL cannot be stopped
here, so every connection of the test database is terminated (`pg_terminate_backend`, what
a restart does to its clients) under a real worker's task in the middle of a query, and
under the run heartbeat: the task is retried and succeeds within about two seconds, on a
fresh connection; the heartbeat goes on."""

import time
import uuid

import pytest
from django.db import connection, transaction
from django.utils import timezone

from orders.models import Order, OrderStatus
from orders.tasks import compensation_scan, ping
from tests.factories import OrderFactory
from tests.fixtures.processes import (
    bronco_process,
    celery_worker_argv,
    subprocess_env,
    wait_until,
)

pytestmark = [pytest.mark.django_db(transaction=True)]

RECOVERY_GOAL = 2.5  # seconds


def _terminate_other_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def _ready() -> None:
    token = uuid.uuid4().hex
    assert ping.apply_async(args=[token]).get(timeout=60)["token"] == token


def test_a_task_whose_database_connection_is_terminated_mid_query_recovers(own_redis):
    argv = celery_worker_argv(concurrency=2, queues="default")
    with bronco_process("db-terminate-worker", argv, subprocess_env()):
        _ready()
        for attempt in range(3):
            with transaction.atomic():
                with connection.cursor() as cursor:
                    # The scan's first query waits on this lock: its connection is in use.
                    cursor.execute("LOCK TABLE orders_order IN ACCESS EXCLUSIVE MODE")
                result = compensation_scan.apply_async(ignore_result=False, expires=None)
                time.sleep(1.0)
                terminated = _terminate_other_backends()
                killed_at = time.monotonic()
            assert terminated >= 1, "no task held a database connection"
            assert result.get(timeout=30) == 0
            took = time.monotonic() - killed_at
            print(
                f"attempt {attempt + 1}: {terminated} connections terminated; "
                f"the task succeeded {took:.2f} s later"
            )
            assert took < RECOVERY_GOAL


def test_the_run_heartbeat_survives_its_connection_being_terminated(settings):
    from orders import runs

    settings.ORDER_RUN_LEASE_SECONDS = 1.5  # a beat every 0.5 s (after the current sleep)
    order = OrderFactory(status=OrderStatus.SETTLING, run_gen=3, run_lease_until=timezone.now())
    with runs.run_heartbeat(order_id=order.pk, gen=3):
        wait_until(
            lambda: Order.objects.get(pk=order.pk).run_lease_until > timezone.now(),
            timeout=10,
            what="the heartbeat's first renewal (its own connection)",
        )
        assert _terminate_other_backends() >= 1
        Order.objects.filter(pk=order.pk).update(
            run_lease_until=timezone.now() - timezone.timedelta(seconds=1)
        )
        wait_until(
            lambda: Order.objects.get(pk=order.pk).run_lease_until > timezone.now(),
            timeout=6,
            what="the heartbeat to renew again on a fresh connection",
        )
