"""The per-process broker session and the order-update callback registry.

Which broker a process uses is the `TRADING_BROKER_FACTORY` setting: a dotted path to a
callable taking the keywords `on_order_update` and `on_deal_update` and returning a
`trading.broker.Broker`
(default: the Futu adapter; tests may choose the in-memory fake). The broker is handed
`dispatch_order_update` and `dispatch_deal_update`, so every callback registered here sees
its pushes. The Futu adapter passes each update on in one process only, whichever claims it
first (`trading.pushes`): a callback runs once per broker update, not once per process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable

from django.conf import settings
from django.utils.module_loading import import_string

from core.exceptions import TIME_LIMITS
from trading.broker import Broker, BrokerOrder, Deal, DealUpdateCallback, OrderUpdateCallback

logger = logging.getLogger(__name__)

BrokerFactory = Callable[..., Broker]

_lock = threading.Lock()
_broker: Broker | None = None
_broker_pid: int | None = None
_broker_key: Hashable = None
_callbacks: list[OrderUpdateCallback] = []
_deal_callbacks: list[DealUpdateCallback] = []


def _settings_key() -> Hashable:
    return (
        os.getpid(),
        settings.TRADING_BROKER_FACTORY,
        settings.FUTU_OPEND_HOST,
        settings.FUTU_OPEND_PORT,
        settings.FUTU_TRD_ENV,
        settings.FUTU_ACC_ID,
        settings.FUTU_TRD_MARKET,
    )


def _close_if_ours() -> None:
    """Close the cached broker unless it was inherited from a parent process (closing it
    would tear down the parent's sockets)."""
    if _broker is not None and _broker_pid == os.getpid():
        _broker.close()


def get_broker() -> Broker:
    """This process's broker: created lazily by `TRADING_BROKER_FACTORY`, re-created in a
    forked child (Celery prefork) and when the broker settings change; the Futu adapter
    reconnects by itself after a disconnect."""
    global _broker, _broker_key, _broker_pid
    key = _settings_key()
    with _lock:
        if _broker is not None and _broker_key != key:
            _close_if_ours()
            _broker = None
        if _broker is None:
            factory: BrokerFactory = import_string(settings.TRADING_BROKER_FACTORY)
            _broker = factory(
                on_order_update=dispatch_order_update, on_deal_update=dispatch_deal_update
            )
            _broker_key, _broker_pid = key, os.getpid()
        return _broker


def reset_broker() -> None:
    """Close this process's session; the next call opens a fresh one."""
    global _broker, _broker_key, _broker_pid
    with _lock:
        _close_if_ours()
        _broker, _broker_key, _broker_pid = None, None, None


def register_order_update_callback(fn: OrderUpdateCallback) -> None:
    """Call `fn(order)` on every order push from the broker. It runs on the broker's callback
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
        except TIME_LIMITS:
            raise  # dispatched on a task's thread that ran out of time: a timeout
        except Exception:  # one bad subscriber must not starve the others
            logger.exception("order update callback %r failed for %s", fn, order.broker_order_id)


def register_deal_update_callback(fn: DealUpdateCallback) -> None:
    """Call `fn(deal)` on every deal push (a new fill, or one cancelled or changed after
    it was reported), on the broker's callback thread: keep it short."""
    with _lock:
        if fn not in _deal_callbacks:
            _deal_callbacks.append(fn)


def unregister_deal_update_callback(fn: DealUpdateCallback) -> None:
    with _lock:
        if fn in _deal_callbacks:
            _deal_callbacks.remove(fn)


def dispatch_deal_update(deal: Deal) -> None:
    for fn in list(_deal_callbacks):
        try:
            fn(deal)
        except TIME_LIMITS:
            raise  # dispatched on a task's thread that ran out of time: a timeout
        except Exception:  # one bad subscriber must not starve the others
            logger.exception("deal update callback %r failed for %s", fn, deal.deal_id)
