"""The Celery broker's settings, chosen by CELERY_BROKER_URL's scheme (a pure function, so
the test settings can choose again for the broker a test run names).

- `redis://` (the default): Bronco's queues are Redis lists. Unacknowledged messages wait in
  Redis until `visibility_timeout`; a Redis that restarts without its data loses every queued
  message, and Bronco re-drives the lost work (`orders.runs.broker_lost_work`).
- `amqp://` (RabbitMQ): every queue is a durable *quorum* queue (replicated, written to disk
  before it is confirmed), every publish waits for the broker's confirm (`confirm_publish`),
  and countdowns use RabbitMQ's native delayed delivery (topic exchanges; Celery declares the
  `celery_delayed_*` levels at worker start). A RabbitMQ restart loses nothing that was
  confirmed, and a consumer's unacknowledged messages return to their queue when its
  connection drops. Redis stays for locks, rate limits, metrics and results.
"""

from typing import Any

from kombu import Exchange, Queue

QUEUE_NAMES = ("default", "chain", "broker")
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def broker_is_amqp(url: str) -> bool:
    """True for a RabbitMQ (AMQP) broker URL."""
    return url.startswith(AMQP_SCHEMES)


def celery_broker_settings(url: str, *, visibility_timeout: int) -> dict[str, Any]:
    """CELERY_* settings for the broker at `url`: its queues, transport options and queue
    type. `visibility_timeout` (seconds) applies to Redis only."""
    if not broker_is_amqp(url):
        return {
            "CELERY_BROKER_URL": url,
            "CELERY_TASK_QUEUES": tuple(Queue(name) for name in QUEUE_NAMES),
            # Redis redelivers an unacked task after the visibility timeout: it must stay
            # above the longest countdown and the hard time limit, or a task would run again
            # while still running.
            "CELERY_BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": visibility_timeout},
        }
    return {
        "CELERY_BROKER_URL": url,
        "CELERY_TASK_QUEUES": tuple(
            Queue(
                name,
                Exchange(name, type="topic", durable=True),
                routing_key=name,
                durable=True,
                queue_arguments={"x-queue-type": "quorum"},
            )
            for name in QUEUE_NAMES
        ),
        "CELERY_TASK_DEFAULT_QUEUE_TYPE": "quorum",
        "CELERY_TASK_DEFAULT_EXCHANGE_TYPE": "topic",
        "CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE": "quorum",
        "CELERY_WORKER_DETECT_QUORUM_QUEUES": True,
        # Publisher confirms: apply_async returns once RabbitMQ has the message.
        "CELERY_BROKER_TRANSPORT_OPTIONS": {"confirm_publish": True},
    }
