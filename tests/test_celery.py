"""Celery wiring: every task names its queue (by the resource it waits on) and is routed
there, every beat entry names a real task, beat's schedule follows the settings at every
start, and a task goes through the real Redis broker to a real worker and back."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.test import override_settings
from django_celery_beat.models import PeriodicTask

from bronco_project.celery import app
from core.beat import BroncoScheduler, beat_schedule_sync
from core.tasks import BRONCO_TASK_PACKAGES, queue_of
from orders.tasks import ping

REPO = Path(__file__).resolve().parents[1]

# Every Bronco task and the queue of the resource it waits on. A new task must be added
# here (the test below fails otherwise), which is the moment to choose its queue.
EXPECTED_QUEUES = {
    # validate only books the order; the cycle steps call OpenD
    "orders.tasks.order_validate": "default",
    "orders.tasks.cycle_open": "broker",
    "orders.tasks.cycle_place": "broker",
    "orders.tasks.cycle_poll": "broker",
    "orders.tasks.cycles_schedule": "default",
    "orders.tasks.cycles_fees_record": "broker",
    # trades symbols whose inventory covers their book, on one snapshot
    "orders.tasks.cycles_open_covered": "broker",
    # settle sends and confirms the settlement transaction
    "orders.tasks.order_settle": "chain",
    # ... and by the batch: sends a batch of settling orders, then follows its transaction
    "orders.tasks.orders_settle_group": "chain",
    "orders.tasks.compensation_scan": "default",
    # publishes a large batch's first tasks (a backfill's fan-out): Redis only
    "orders.tasks.runs_enqueue": "default",
    "orders.tasks.ping": "default",
    "chain.tasks.settlements_sweep": "chain",
    "chain.tasks.settlements_heal": "chain",
    "refunds.tasks.refund_execute": "chain",
    "refunds.tasks.refund_check": "chain",
    "refunds.tasks.refunds_retry_waiting": "chain",
    "refunds.tasks.refunds_check_sent": "chain",
    "ops.tasks.evaluate_alert_rules": "default",
    # the watch and a push's refresh sync broker orders at OpenD
    "trading.tasks.broker_orders_watch": "broker",
    "trading.tasks.broker_order_refresh": "broker",
}


def _bronco_tasks() -> dict[str, object]:
    app.loader.import_default_modules()  # what a worker does: every app's tasks module
    return {
        name: task
        for name, task in app.tasks.items()
        if name.split(".", 1)[0] in BRONCO_TASK_PACKAGES
    }


def test_every_task_names_its_queue_and_is_routed_there():
    tasks = _bronco_tasks()
    assert set(tasks) == set(EXPECTED_QUEUES)
    for name, task in tasks.items():
        assert task.bronco_queue == EXPECTED_QUEUES[name], name
        route = app.amqp.router.route({}, name, (), {})
        assert route["queue"].name == EXPECTED_QUEUES[name], name


def test_a_process_that_never_imported_the_tasks_routes_by_name_all_the_same():
    """The listener sends pipeline tasks without importing orders.tasks first."""
    code = (
        "import django; django.setup();"
        "from bronco_project.celery import app;"
        "import sys; assert 'orders.tasks' not in sys.modules;"
        "print(app.amqp.router.route({}, 'orders.tasks.order_settle', (), {})['queue'].name)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bronco_project.settings.test"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "chain"


def test_an_unknown_task_name_is_not_routed_by_bronco():
    assert queue_of("orders.tasks.no_such_task") is None
    assert queue_of("celery.backend_cleanup") is None


def test_every_beat_entry_names_a_bronco_task_with_its_queue():
    tasks = _bronco_tasks()
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert entry["task"] in tasks, name
        assert float(entry["schedule"]) >= 1
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "chain.tasks.settlements_sweep" in scheduled
    assert "orders.tasks.compensation_scan" in scheduled


def test_interval_settings_reach_the_schedule_at_import():
    code = (
        "import django; django.setup(); from django.conf import settings;"
        "print(settings.CELERY_BEAT_SCHEDULE['bronco.compensation_scan']['schedule'])"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bronco_project.settings.test",
        "COMPENSATION_SCAN_SECONDS": "7",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) == 7.0


def _schedule(scan_seconds: int) -> dict:
    return {
        **settings.CELERY_BEAT_SCHEDULE,
        "bronco.compensation_scan": {
            "task": "orders.tasks.compensation_scan",
            "schedule": float(scan_seconds),
        },
    }


@pytest.mark.django_db(transaction=True)  # the scheduler closes the connection it used
def test_beat_follows_an_interval_setting_changed_between_starts():
    """Start beat's scheduler with the scan every 30 s, change the setting to 5 s, start
    again: the scheduler now runs it every 5 s (today's migrations froze it at 30)."""
    for seconds in (30, 5):
        with override_settings(CELERY_BEAT_SCHEDULE=_schedule(seconds)):
            scheduler = BroncoScheduler(app=app, lazy=False)
            entry = scheduler.schedule["bronco.compensation_scan"]
            assert entry.schedule.run_every.total_seconds() == seconds
    row = PeriodicTask.objects.get(name="bronco.compensation_scan")
    assert (row.interval.every, row.interval.period) == (5, "seconds")


@pytest.mark.django_db
def test_sync_removes_entries_of_bronco_tasks_the_settings_no_longer_list():
    from django_celery_beat.models import IntervalSchedule

    every, _ = IntervalSchedule.objects.get_or_create(every=30, period="seconds")
    PeriodicTask.objects.create(
        name="orders: compensation scan", task="orders.tasks.compensation_scan", interval=every
    )
    PeriodicTask.objects.create(name="someone else's", task="other.task", interval=every)
    synced = beat_schedule_sync()
    names = set(PeriodicTask.objects.values_list("name", flat=True))
    assert "orders: compensation scan" not in names
    assert "someone else's" in names
    assert set(synced) <= names
    assert beat_schedule_sync() == synced  # idempotent


def test_queues_and_reliability_settings():
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_time_limit and conf.task_soft_time_limit
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert {q.name for q in conf.task_queues} == {"default", "chain", "broker"}
    assert conf.beat_scheduler == "core.beat:BroncoScheduler"
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


def test_a_rabbitmq_broker_gets_durable_quorum_queues_and_publisher_confirms():
    from bronco_project.settings.broker import celery_broker_settings

    amqp = celery_broker_settings("amqp://u:p@127.0.0.1:5672/v", visibility_timeout=3600)
    assert amqp["CELERY_BROKER_TRANSPORT_OPTIONS"] == {"confirm_publish": True}
    for queue in amqp["CELERY_TASK_QUEUES"]:
        assert queue.durable and queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.exchange.type == "topic"  # native delayed delivery needs it
    assert {q.name for q in amqp["CELERY_TASK_QUEUES"]} == {"default", "chain", "broker"}
    redis_conf = celery_broker_settings("redis://127.0.0.1:6379/1", visibility_timeout=77)
    assert redis_conf["CELERY_BROKER_TRANSPORT_OPTIONS"] == {"visibility_timeout": 77}
