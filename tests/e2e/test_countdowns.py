"""Countdowns through the configured Celery broker and a real worker: on RabbitMQ, Celery's
native delayed delivery counts whole seconds (a countdown under one would be sent with a
delay of 0), so Bronco's tasks wait one second there; on Redis they wait as asked. The
pipeline's short re-checks (ORDER_SETTLE_CHECK_SECONDS 0.3 s in these tests) depend on it."""

import time

import pytest

from orders.tasks import ping

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("countdown", [0.3, 1.5])
def test_a_countdown_task_reaches_a_worker(stack, countdown):
    stack.start_worker()
    assert ping.apply_async(args=["warm"]).get(timeout=60)["token"] == "warm"
    started = time.monotonic()
    result = ping.apply_async(args=[f"after-{countdown}"], countdown=countdown)
    assert result.get(timeout=20)["token"] == f"after-{countdown}"
    took = time.monotonic() - started
    assert took >= countdown - 0.05
