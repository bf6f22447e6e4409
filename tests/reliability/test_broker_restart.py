"""Workers survive their broker's restart (issue 17, point 3): a real prefork worker holding
unacknowledged messages (countdown tasks it reserved) while its Redis is stopped and started
again, empty, several times; after each restart the same worker process is still there and
consumes new tasks."""

import time
import uuid

import pytest
import redis
from django.db import connection, transaction
from kombu.exceptions import OperationalError as KombuOperationalError

from ops.tasks import evaluate_alert_rules
from orders.tasks import ping
from tests.fixtures.processes import bronco_process, celery_worker_argv, subprocess_env

pytestmark = [pytest.mark.django_db(transaction=True)]

RESTARTS = 5


def _ping_round_trip(timeout: float) -> dict:
    """Send a ping and wait for its answer, retrying the send while the broker is still
    coming back (the test's own client reconnects like any producer)."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = ping.apply_async(args=[token])
            answer = result.get(timeout=max(deadline - time.monotonic(), 1))
            assert answer["token"] == token
            return answer
        except (redis.ConnectionError, KombuOperationalError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_worker_keeps_consuming_through_repeated_broker_restarts(own_redis):
    env = subprocess_env(CELERY_WORKER_NAME="restarts")
    with bronco_process("worker-broker-restart", celery_worker_argv(concurrency=2), env) as worker:
        _ping_round_trip(timeout=60)
        for n in range(RESTARTS):
            # Held by the worker, unacknowledged, when the broker goes: what kombu restores.
            for _ in range(3):
                ping.apply_async(args=["held"], countdown=60)
            time.sleep(1.0)
            own_redis.stop()
            time.sleep(1.0)
            own_redis.start()
            started = time.monotonic()
            _ping_round_trip(timeout=60)
            assert worker.poll() is None, f"the worker exited after restart {n + 1}"
            print(f"restart {n + 1}: consuming again after {time.monotonic() - started:.1f} s")
        assert worker.poll() is None


def test_a_task_that_outlives_a_broker_restart_does_not_end_the_worker(own_redis):
    """A task working while Redis restarts acknowledges afterwards on the old channel (acks
    late): kombu builds a client from the detached transport and the worker died with
    "Unrecoverable error: 'NoneType' ... 'hostname'" (the chaos run's default worker)."""
    env = subprocess_env(CELERY_WORKER_NAME="outlives")
    with bronco_process("worker-task-outlives", celery_worker_argv(concurrency=2), env) as worker:
        _ping_round_trip(timeout=60)
        with transaction.atomic():
            with connection.cursor() as cursor:
                # The task's first rule reads orders: it works (blocked) through the restart.
                cursor.execute("LOCK TABLE orders_order IN ACCESS EXCLUSIVE MODE")
            evaluate_alert_rules.apply_async()
            time.sleep(2.0)
            own_redis.stop()
            time.sleep(1.0)
            own_redis.start()
            time.sleep(2.0)  # the worker reconnects while the task still works
        _ping_round_trip(timeout=60)  # the task finished and acked; the worker goes on
        time.sleep(1.0)
        assert worker.poll() is None, "the worker exited when the task acknowledged"
        _ping_round_trip(timeout=30)
