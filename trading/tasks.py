"""Celery doors into the broker-order records (`trading.order_records`), on the `broker`
queue (they call OpenD). Each is safe to run twice: a sync only records what the broker says.
"""

from __future__ import annotations

from core.tasks import QUEUE_BROKER, TRANSIENT_ERRORS, bronco_task
from trading import order_records
from trading.exceptions import BrokerUnavailable, RateLimited


@bronco_task(name="trading.tasks.broker_orders_watch", queue=QUEUE_BROKER)
def broker_orders_watch() -> int:
    """Beat (`TRADING_WATCH_INTERVAL_SECONDS`): sync the final orders whose fills may still
    change, within the watch's share of the history budget. Returns how many were synced."""
    return order_records.broker_orders_watch()


@bronco_task(
    name="trading.tasks.broker_order_refresh",
    queue=QUEUE_BROKER,
    autoretry_for=(RateLimited, BrokerUnavailable, *TRANSIENT_ERRORS),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=10,
)
def broker_order_refresh(client_id: str) -> None:
    """Sync one broker order now (a push said its fills or status changed after it was
    final): a changed fill opens its correction case without waiting for the watch."""
    order_records.broker_order_sync(client_id=client_id)
