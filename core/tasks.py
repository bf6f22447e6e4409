"""The one set of Celery task options every Bronco task starts from, and the queue names.

Queues are named by the resource a task waits on, so a slow broker cannot starve settlement:
`broker` for anything that calls OpenD (quotes included), `chain` for anything that sends a
transaction or waits on one, `default` for the rest. Each task names its queue on its own
decorator (`bronco_task(queue=...)`), so no table of names can drift from the tasks;
`tests/test_celery.py` walks every registered task and beat entry and checks it.

Celery 5.7 deprecates the `queue` task attribute in favour of `task_routes`, so the
decorator records the queue and `route_task` (the one entry of CELERY_TASK_ROUTES) reads it
back. The router imports a task's module when the sending process has not yet (a listener
that sends `orders.tasks.*` by name), so a task can never silently land on the default queue.
"""

import base64
import importlib
import json
from collections.abc import Callable
from typing import Any

from celery import Task, current_app, shared_task
from django.db import InterfaceError, OperationalError

from bronco_project.settings.broker import broker_is_amqp
from core.secrets import VaultUnavailable

QUEUE_DEFAULT = "default"
QUEUE_BROKER = "broker"
QUEUE_CHAIN = "chain"
QUEUES = (QUEUE_DEFAULT, QUEUE_BROKER, QUEUE_CHAIN)

# A database that blinked, or Vault restarting or rotating credentials: a retry re-reads
# fresh state (every task is safe to run twice).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    VaultUnavailable,
)

# A task's time limits are `core.exceptions.TIME_LIMITS`: re-raised before any broad
# `except Exception`, so a timed-out task never ends as a success.

TASK_OPTIONS: dict[str, Any] = {
    # Ack after the task ran, and give a task whose worker died back to the queue: a task is
    # lost only if the broker itself loses it (the compensation scan covers that).
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 0.5,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 20,
    # Below CELERY_VISIBILITY_TIMEOUT (a settings check keeps it so).
    "soft_time_limit": 45,
    "time_limit": 60,
}


# Task name -> queue, filled by `bronco_task` as task modules are imported.
_QUEUE_OF: dict[str, str] = {}
# Packages whose tasks are Bronco's (and so must be declared with `bronco_task`).
BRONCO_TASK_PACKAGES = ("orders", "chain", "trading", "refunds", "ops", "core")


class BroncoTask(Task):
    """Celery's Task, whose countdowns RabbitMQ's native delayed delivery can carry: that
    counts whole seconds (kombu's `calculate_routing_key` refuses 0), so on an AMQP broker a
    countdown under one second waits one second (on Redis it stays as asked)."""

    abstract = True

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        countdown = options.get("countdown")
        if countdown and 0 < countdown < 1 and broker_is_amqp(str(self.app.conf.broker_url)):
            options["countdown"] = 1
        return super().apply_async(args, kwargs, **options)


def bronco_task(*, name: str, queue: str, **overrides: Any) -> Callable[[Callable[..., Any]], Any]:
    """`shared_task` with Bronco's options, the task's queue and a stable name.

    `overrides` replace single options (e.g. `autoretry_for` with an app's own transient
    errors, longer limits for a sweep). Raises ValueError for a queue Bronco does not run.
    """
    if queue not in QUEUES:
        raise ValueError(f"task {name}: unknown queue {queue!r}; use one of {QUEUES}")
    _QUEUE_OF[name] = queue
    return shared_task(
        name=name, bronco_queue=queue, base=BroncoTask, **{**TASK_OPTIONS, **overrides}
    )


def queue_of(name: str) -> str | None:
    """The queue `bronco_task` declared for task `name` (importing its module if this process
    has not yet), or None for a task that is not Bronco's."""
    if name not in _QUEUE_OF and name.split(".", 1)[0] in BRONCO_TASK_PACKAGES:
        module = name.rsplit(".", 1)[0]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            return None
    return _QUEUE_OF.get(name)


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict | None:
    """Celery router (CELERY_TASK_ROUTES): a Bronco task goes to the queue its decorator
    named; anything else falls through to Celery's default queue."""
    queue = queue_of(name)
    return {"queue": queue} if queue else None


def queue_depth(queue: str) -> int:
    """How many messages wait in `queue` on the Celery broker (Redis or RabbitMQ), not counting
    those a worker already holds; 0 for a queue the broker does not know yet."""
    with current_app.pool.acquire(block=True) as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except conn.channel_errors:
            conn.close()  # AMQP closes the channel on a failed passive declare: start afresh
            return 0


def queued_tasks(queue: str, *, limit: int) -> list[tuple[str, list[Any], dict[str, Any]]] | None:
    """The tasks waiting in `queue` on a Redis broker, oldest first, at most `limit` per
    priority list: (task name, args, kwargs) each, read without taking them (LRANGE on
    kombu's lists; a message that is not a JSON Celery task is left out). Tasks a worker
    already holds are not there. None on another broker (RabbitMQ's queues cannot be read
    without consuming them). Reads kombu's own key names (`_q_for_pri`), without a
    `global_keyprefix` transport option (Bronco sets none; with one this finds nothing, and
    the scan falls back on leases alone)."""
    with current_app.pool.acquire(block=True) as conn:
        if conn.transport.driver_type != "redis":
            return None
        channel = conn.default_channel
        raw: list[bytes] = []
        for priority in channel.priority_steps:
            # kombu pushes on the left and pops on the right: the oldest is last.
            raw += reversed(channel.client.lrange(channel._q_for_pri(queue, priority), -limit, -1))
    out = []
    for item in raw:
        try:
            message = json.loads(item)
            body = message["body"]
            if (message.get("properties") or {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args, kwargs, _embed = json.loads(body)
            out.append((str(message["headers"]["task"]), list(args), dict(kwargs)))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return out
