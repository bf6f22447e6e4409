"""Celery doors into the order services. Each task takes an id, calls one service, and
enqueues what the service says comes next. Every task is safe to run twice: the services
re-read state and act only when the order is still where they expect it."""

import logging
import socket

from celery import shared_task
from django.db import OperationalError, connection

from orders import pipeline, scans
from orders.exceptions import StaleOrderVersion

logger = logging.getLogger(__name__)

# Transient: another worker moved the order first, or the database blinked. Retrying re-reads
# fresh state, so a retry of a stage that already happened does nothing.
_TRANSIENT = (StaleOrderVersion, OperationalError)
_STAGE_OPTIONS = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": _TRANSIENT,
    "retry_backoff": 0.2,
    "retry_backoff_max": 10,
    "retry_jitter": True,
    "max_retries": None,
    "soft_time_limit": 45,
    "time_limit": 60,
}


def _follow(order_id: int, nxt: pipeline.Next | None) -> None:
    if nxt is not None:
        from bronco_project.celery import app

        app.send_task(nxt.task, args=[order_id], countdown=nxt.countdown or None)


@shared_task(name="orders.tasks.order_start", **_STAGE_OPTIONS)
def order_start(order_id: int) -> None:
    """Entry point enqueued by the listener after the order's transaction commits."""
    _follow(order_id, pipeline.order_validate(order_id=order_id))


@shared_task(name="orders.tasks.order_validate", **_STAGE_OPTIONS)
def order_validate(order_id: int) -> None:
    _follow(order_id, pipeline.order_validate(order_id=order_id))


@shared_task(name="orders.tasks.order_place", **_STAGE_OPTIONS)
def order_place(order_id: int) -> None:
    _follow(order_id, pipeline.order_place(order_id=order_id))


@shared_task(name="orders.tasks.order_poll", **_STAGE_OPTIONS)
def order_poll(order_id: int) -> None:
    _follow(order_id, pipeline.order_poll(order_id=order_id))


@shared_task(name="orders.tasks.order_cancel", **_STAGE_OPTIONS)
def order_cancel(order_id: int) -> None:
    """A user asked to cancel: re-drive whichever stage the order is in; each stage honours
    the cancel flag (place refunds an unplaced order, poll cancels a working one)."""
    _follow(order_id, scans.next_stage_for(order_id=order_id))


@shared_task(name="orders.tasks.order_settle", **_STAGE_OPTIONS)
def order_settle(order_id: int) -> None:
    _follow(order_id, pipeline.order_settle(order_id=order_id))


@shared_task(
    name="orders.tasks.compensation_scan", acks_late=True, soft_time_limit=50, time_limit=60
)
def compensation_scan() -> int:
    """Beat: re-drive every open order that stalled. Returns how many it re-drove."""
    count = 0
    for order_id, nxt in scans.stalled_orders_claim():
        _follow(order_id, nxt)
        count += 1
    if count:
        logger.info("compensation scan re-drove %d orders", count)
    return count


@shared_task(name="orders.tasks.ping", acks_late=True, soft_time_limit=10, time_limit=20)
def ping(token: str) -> dict:
    """Round-trip check for operators and tests: proves a worker took the task from the
    broker and reached the database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (db_ok,) = cursor.fetchone()
    return {"token": token, "db": db_ok == 1, "worker": socket.gethostname()}
