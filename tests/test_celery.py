"""A task goes through the real Redis broker to a real worker and back."""

import uuid

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from bronco_project.celery import app
from orders.tasks import ping


def test_queues_and_reliability_settings():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_time_limit and conf.task_soft_time_limit
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert {q.name for q in conf.task_queues} == {"default", "chain", "broker"}
    assert conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    assert conf.broker_url.startswith("redis://")


@pytest.mark.django_db(transaction=True)
def test_round_trip_through_real_redis_and_worker():
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    token = uuid.uuid4().hex
    with start_worker(
        app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=["default"]
    ):
        result = ping.apply_async(args=[token], queue="default")
        payload = result.get(timeout=30)
    assert payload["token"] == token
    assert payload["db"] is True
