"""Broker pushes handled once, however many processes hold a broker session.

Futu pushes every order update and every deal to each connection subscribed to the account,
and every Bronco process that trades holds one (each worker child, beat, the listener): left
alone, one fill becomes one handling per process (issue 17: one fill made 9 poll tasks).
Before a push reaches Bronco's callbacks (`trading.session`), its process claims it in
Redis: `SET key 1 NX EX ttl`, the key naming the account, the kind of push and the update's
fingerprint (an order: id, status, filled quantity, average, update time; a deal: id,
status, quantity, price). The first process to claim an update handles it; the others drop
it. A later update of the same order has another fingerprint and is handled again.

Redis unreachable: the push is handled anyway (a duplicate costs an idempotent poll, a
dropped push would wait for the next poll).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading

import redis
from django.conf import settings

from trading.broker import BrokerOrder, Deal

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_client: redis.Redis | None = None
_client_pid: int | None = None


def _redis() -> redis.Redis:
    global _client, _client_pid
    with _lock:
        if _client is None or _client_pid != os.getpid():
            _client = redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0
            )
            _client_pid = os.getpid()
        return _client


def order_fingerprint(order: BrokerOrder) -> str:
    return "|".join(
        (
            order.broker_order_id,
            order.raw_status,
            str(order.filled_qty.normalize()),
            str(order.avg_fill_price.normalize() if order.avg_fill_price is not None else ""),
            order.updated_at,
        )
    )


def deal_fingerprint(deal: Deal) -> str:
    return "|".join(
        (deal.deal_id, str(deal.status), str(deal.qty.normalize()), str(deal.price.normalize()))
    )


def push_claim(*, account: str, kind: str, fingerprint: str) -> bool:
    """True when this process is the first to claim this push (it handles it), False when
    another already did (drop it). `account` names the broker account (trd_env:acc_id),
    `kind` is "order" or "deal". Claims expire after TRADING_PUSH_ONCE_SECONDS."""
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    key = f"{settings.TRADING_PUSH_KEY_PREFIX}:{account}:{kind}:{digest}"
    try:
        return bool(_redis().set(key, os.getpid(), nx=True, ex=settings.TRADING_PUSH_ONCE_SECONDS))
    except redis.RedisError as exc:
        logger.warning("push claim not possible (%s): handling the %s push here", exc, kind)
        return True
