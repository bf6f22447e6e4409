"""The per-process broker session and the order-update callback registry."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Hashable

from django.conf import settings

from trading.broker import BrokerOrder, OrderUpdateCallback
from trading.futu import FutuBroker

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_broker: FutuBroker | None = None
_broker_key: Hashable = None
_callbacks: list[OrderUpdateCallback] = []


def _settings_key() -> Hashable:
    return (
        os.getpid(),
        settings.FUTU_OPEND_HOST,
        settings.FUTU_OPEND_PORT,
        settings.FUTU_TRD_ENV,
        settings.FUTU_ACC_ID,
        settings.FUTU_TRD_MARKET,
    )


def get_broker() -> FutuBroker:
    """This process's adapter: created lazily, re-created in a forked child (Celery prefork)
    and when the OpenD settings change; it reconnects by itself after a disconnect."""
    global _broker, _broker_key
    key = _settings_key()
    with _lock:
        if _broker is not None and _broker_key != key:
            if _broker.pid == os.getpid():
                _broker.close()
            _broker = None
        if _broker is None:
            _broker = FutuBroker.from_settings(on_order_update=dispatch_order_update)
            _broker_key = key
        return _broker


def reset_broker() -> None:
    """Close this process's session; the next call opens a fresh one."""
    global _broker, _broker_key
    with _lock:
        if _broker is not None and _broker.pid == os.getpid():
            _broker.close()
        _broker, _broker_key = None, None


def register_order_update_callback(fn: OrderUpdateCallback) -> None:
    """Call `fn(order)` on every order push from the broker. It runs on the SDK's callback
    thread: keep it short (e.g. enqueue the poll task) and never let it block."""
    with _lock:
        if fn not in _callbacks:
            _callbacks.append(fn)


def unregister_order_update_callback(fn: OrderUpdateCallback) -> None:
    with _lock:
        if fn in _callbacks:
            _callbacks.remove(fn)


def dispatch_order_update(order: BrokerOrder) -> None:
    for fn in list(_callbacks):
        try:
            fn(order)
        except Exception:  # one bad subscriber must not starve the others
            logger.exception("order update callback %r failed for %s", fn, order.broker_order_id)
