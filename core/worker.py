"""Bronco's Celery worker consumer (CELERY_WORKER_CONSUMER): Celery's own, with one guard that
keeps a worker alive through its Redis broker's restart.

The failing path, in the pinned celery 5.7.0 / kombu 5.7.0 (the newest on PyPI): when the
broker connection drops, `Consumer.on_connection_error_after_connected` first `collect()`s
the connection (which detaches its transport), then closes it; closing a Redis channel
restores the worker's unacknowledged messages (`QoS.restore_unacked_once`), which builds a
Redis client from the transport that is no longer there and raises
`AttributeError: 'NoneType' object has no attribute 'hostname'` (kombu's redis
`Channel._connparams`). `ignore_errors` tolerates only connection and channel errors, so the
AttributeError ends the worker ("Unrecoverable error"): every time the worker held an
unacknowledged message — a reserved or countdown task — when Redis went (the chaos run's "1 in
4"). The same detached-transport close was reported upstream as celery/kombu#582 ("Error on
restarting Gossip", the same `_connparams` AttributeError) and the restore-at-close failure as
celery/kombu#970; no released version fixes this path. `tests/reliability/test_broker_restart.py`
reproduces it on the first restart without this guard.

What the guard gives up: nothing that was possible. The messages cannot be restored through a
broker that is gone; a Redis that comes back with its data restores them after the visibility
timeout, one that comes back empty lost them, and Bronco's runs re-drive what was lost
(`orders.runs`, `orders.tasks.compensation_scan`).
"""

import logging

from celery.worker.consumer import Consumer
from kombu import Connection

logger = logging.getLogger(__name__)


def _close_tolerating_detached_transport(connection: Connection) -> None:
    """Make `connection.close()` survive kombu's restore through a detached transport."""
    close = connection.close

    def close_broken() -> None:
        try:
            close()
        except AttributeError:
            logger.warning(
                "broker connection lost; its unacknowledged messages could not be restored "
                "through it (they return after the visibility timeout, or were lost with the "
                "broker); reconnecting",
                exc_info=True,
            )

    connection.close = close_broken  # type: ignore[method-assign]


class BroncoConsumer(Consumer):
    """Celery's consumer, closing a broken broker connection without dying (see module), and
    acknowledging without dying a task that was received before the connection broke and
    finished after it: its message belongs to the old channel, whose ack builds a Redis
    client from the detached transport (the same `_connparams` AttributeError, raised from
    `Message.ack_log_error` inside the consumer loop: "Unrecoverable error", seen in the
    2,000-order chaos run when a task outlived the Redis restart). Such an ack (or reject)
    is logged as "Couldn't ack" and given up, as for any broken connection: a broker that
    kept its data redelivers the message after the visibility timeout (every task is safe to
    run twice), one that came back empty lost it."""

    def update_strategies(self) -> None:
        # Requests take the errors their ack tolerates from here (celery.worker.strategy
        # reads `consumer.connection_errors` once per strategy); the consumer's own loop
        # keeps the transport's errors alone as recoverable.
        errors = self.connection_errors
        self.connection_errors = (*errors, AttributeError)
        try:
            super().update_strategies()
        finally:
            self.connection_errors = errors

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        if self.connection is not None:
            _close_tolerating_detached_transport(self.connection)
        super().on_connection_error_after_connected(exc)
