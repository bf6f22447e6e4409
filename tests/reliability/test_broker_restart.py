"""Workers survive their broker's restart (issue 17, point 3): a real prefork worker holding
unacknowledged messages (countdown tasks it reserved) while its Redis is stopped and started
again, empty, several times; after each restart the same worker process is still there and
consumes new tasks."""

import time
import uuid

import pytest
import redis
from kombu.exceptions import OperationalError as KombuOperationalError

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
