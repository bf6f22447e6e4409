"""Writes of the order lifecycle that other apps call (the listener creates orders here)."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.audit import AuditEntry, audit_record, audit_record_many
from orders.exceptions import IllegalTransition, OrderError, StaleOrderVersion
from orders.models import Order, OrderType
from orders.state import order_record

if TYPE_CHECKING:
    from trading.broker import BrokerOrder

logger = logging.getLogger(__name__)

PIPELINE_START_TASK = "orders.tasks.order_start"
_CANCEL_ATTEMPTS = 5
POLL_TASK = "orders.tasks.order_poll"


@dataclass(frozen=True)
class ChainOrderRequest:
    """What the listener decoded from a Deposit or Redeem log, in Bronco's types."""

    chain_id: int
    order_type: str
    onchain_id: int
    tx_hash: str
    log_index: int
    user_address: str
    symbol: str
    usdt_amount: int = 0
    token_amount: int = 0


def _enqueue_pipeline(order_ids: Sequence[int]) -> None:
    """Start the pipeline of each order once the caller's transaction commits, publishing
    them all through one broker connection."""
    ids = list(order_ids)
    if not ids:
        return

    def publish() -> None:
        with current_app.producer_or_acquire() as producer:
            for order_id in ids:
                current_app.send_task(PIPELINE_START_TASK, args=[order_id], producer=producer)

    transaction.on_commit(publish, robust=True)


_OrderKey = tuple[int, str, int]


def _key(request: ChainOrderRequest) -> _OrderKey:
    return (request.chain_id, request.order_type, int(request.onchain_id))


def _existing_orders(keys: Sequence[_OrderKey]) -> dict[_OrderKey, Order]:
    found: dict[_OrderKey, Order] = {}
    by_chain: dict[int, set[int]] = {}
    for chain_id, _type, onchain_id in keys:
        by_chain.setdefault(chain_id, set()).add(onchain_id)
    for chain_id, ids in by_chain.items():
        for order in Order.objects.filter(chain_id=chain_id, onchain_id__in=ids):
            found[(order.chain_id, order.order_type, int(order.onchain_id))] = order
    return found


def _insert_orders(requests: Sequence[ChainOrderRequest], actor: str) -> dict[_OrderKey, Order]:
    deadline = timezone.now() + timezone.timedelta(seconds=settings.ORDER_DEADLINE_SECONDS)
    orders = Order.objects.bulk_create(
        [
            Order(
                order_type=r.order_type,
                chain_id=r.chain_id,
                onchain_id=r.onchain_id,
                chain_tx_hash=r.tx_hash,
                log_index=r.log_index,
                user_address=r.user_address,
                symbol=r.symbol,
                stock_code=settings.BRONCO_SYMBOLS.get(r.symbol, ""),
                usdt_amount=r.usdt_amount,
                token_amount=r.token_amount,
                deadline=deadline,
            )
            for r in requests
        ]
    )
    audit_record_many(
        [
            AuditEntry(
                actor=actor,
                action="order.created",
                order_id=order.pk,
                after={
                    "type": r.order_type,
                    "onchain_id": r.onchain_id,
                    "tx_hash": r.tx_hash,
                    "log_index": r.log_index,
                    "user": r.user_address,
                    "symbol": r.symbol,
                    "usdt_amount": r.usdt_amount,
                    "token_amount": r.token_amount,
                },
            )
            for order, r in zip(orders, requests, strict=True)
        ]
    )
    for order, r in zip(orders, requests, strict=True):
        logger.info("order created", extra={"order_id": order.pk, "tx_hash": r.tx_hash})
    return {_key(r): order for order, r in zip(orders, requests, strict=True)}


def orders_create_from_chain(
    *, requests: Sequence[ChainOrderRequest], actor: str
) -> list[tuple[Order, bool]]:
    """The one order of each chain event (the listener's batch), as (order, created), in the
    order given.

    Idempotent by the unique key (chain id, type, on-chain id): a replayed or duplicated log,
    or the same event twice in one batch, returns the existing order with created False and
    enqueues nothing. Must run inside the caller's transaction; each new order's pipeline is
    enqueued only after that transaction commits. One query finds what exists, one INSERT
    creates the rest and one appends their audit entries; should the INSERT lose a race to
    another writer, it falls back to one order at a time.
    """
    for request in requests:
        if request.order_type not in OrderType.values:
            raise ValueError(f"unknown order type {request.order_type!r}")
    keys = [_key(r) for r in requests]
    existing = _existing_orders(keys)
    new: dict[_OrderKey, ChainOrderRequest] = {}
    for key, request in zip(keys, requests, strict=True):
        if key not in existing:
            new.setdefault(key, request)
    created: dict[_OrderKey, Order] = {}
    if new:
        try:
            with transaction.atomic():
                created = _insert_orders(list(new.values()), actor)
        except IntegrityError:
            for key, request in new.items():
                try:
                    with transaction.atomic():
                        created.update(_insert_orders([request], actor))
                except IntegrityError:
                    existing.update(_existing_orders([key]))
        _enqueue_pipeline([order.pk for order in created.values()])
    results: list[tuple[Order, bool]] = []
    reported: set[_OrderKey] = set()
    for key in keys:
        if key in created and key not in reported:
            reported.add(key)
            results.append((created[key], True))
        else:
            results.append((created.get(key) or existing[key], False))
    return results


def order_create_from_chain(*, request: ChainOrderRequest, actor: str) -> tuple[Order, bool]:
    """Create the one order for a chain event, or return the existing one (see
    `orders_create_from_chain`, of which this is the single-event form)."""
    (result,) = orders_create_from_chain(requests=[request], actor=actor)
    return result


def order_request_cancel(
    *, chain_id: int, deposit_id: int, tx_hash: str, actor: str
) -> Order | None:
    """Record a user's CancelRequested for a deposit and wake the pipeline.

    Idempotent: a second request for the same deposit changes nothing. Returns None when no
    such deposit order exists (the listener quarantines that event). A pipeline stage may move
    the order at the same moment: the conditional update then loses, and we re-read and try
    again. A cancel that arrives after the order is terminal is recorded in the audit log
    only: no refund is owed beyond what settlement already paid.
    """
    for _ in range(_CANCEL_ATTEMPTS):
        order = Order.objects.filter(
            chain_id=chain_id, order_type=OrderType.BUY, onchain_id=deposit_id
        ).first()
        if order is None:
            return None
        if order.cancel_requested_at is not None:
            return order
        if order.is_terminal:
            audit_record(
                actor=actor,
                action="order.cancel_after_terminal",
                order_id=order.pk,
                after={"tx_hash": tx_hash, "status": order.status, "refund_owed": 0},
            )
            return order
        flagged = _cancel_flag(order=order, actor=actor, action="order.cancel_requested")
        if flagged is not None:
            return flagged
    raise StaleOrderVersion(order.pk, order.version)


def _cancel_flag(*, order: Order, actor: str, action: str) -> Order | None:
    """Set the cancel flag (audited) and wake the pipeline after commit. None when another
    worker moved the order first: the caller re-reads it and tries again."""
    try:
        with transaction.atomic():
            order = order_record(
                order=order, actor=actor, action=action, cancel_requested_at=timezone.now()
            )
    except (StaleOrderVersion, IllegalTransition):
        return None
    transaction.on_commit(
        partial(current_app.send_task, "orders.tasks.order_cancel", args=[order.pk]),
        robust=True,
    )
    return order


def order_broker_pushed(broker_order: "BrokerOrder") -> None:
    """A broker push (fill, cancel, failure) for one of our orders: enqueue a poll of it, so
    pushed and polled updates go through one path. Runs on the SDK's callback thread: it only
    looks the order up and enqueues. An extra poll is harmless (stages re-read state)."""
    try:
        order_id = (
            Order.objects.filter(client_id=broker_order.client_id)
            .values_list("pk", flat=True)
            .first()
        )
    finally:
        connection.close()  # the SDK's thread is long-lived: hold no connection between pushes
    if order_id is None:
        return
    current_app.send_task(POLL_TASK, args=[order_id])


def order_operator_cancel(*, order_id: int, actor: str) -> Order:
    """An operator cancels an open deposit: the same path as a user's on-chain cancel (the
    cancel flag, then `order_cancel` re-drives the order's stage after commit, which cancels
    it at the broker and refunds what was not filled).

    Idempotent: an order whose cancel was already requested is returned unchanged. Refuses,
    with `OrderError`, a redeem (its shares are the user's to sell) and a terminal order
    (settled already: a refund is the remedy, not a cancel). Retries a lost optimistic race.
    """
    order = None
    for _ in range(_CANCEL_ATTEMPTS):
        order = Order.objects.filter(pk=order_id).first()
        if order is None:
            raise OrderError(f"order {order_id} does not exist")
        if order.order_type != OrderType.BUY:
            raise OrderError(f"order {order_id} is a redeem: only deposits can be cancelled")
        if order.is_terminal:
            raise OrderError(
                f"order {order_id} is already {order.status}: nothing to cancel "
                "(request a refund if money is still owed)"
            )
        if order.cancel_requested_at is not None:
            return order
        flagged = _cancel_flag(order=order, actor=actor, action="order.operator_cancel_requested")
        if flagged is None:
            continue
        order = flagged
        logger.info(
            "operator cancel requested",
            extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash, "actor": actor},
        )
        return order
    raise StaleOrderVersion(order_id, order.version if order else 0)


def order_operator_retry(*, order_id: int, actor: str) -> str:
    """An operator re-drives an open order: enqueue (after commit) the task of the stage its
    status calls for, as the compensation scan would, and audit who asked. Safe at any
    moment: every stage re-reads state and does nothing when the order moved on. Returns
    the task name; refuses a terminal or unknown order with `OrderError`."""
    from orders.scans import next_stage_for  # scans -> pipeline -> chain: import late

    order = Order.objects.filter(pk=order_id).first()
    if order is None:
        raise OrderError(f"order {order_id} does not exist")
    nxt = next_stage_for(order_id=order_id)
    if nxt is None:
        raise OrderError(f"order {order_id} is {order.status}: there is no stage to retry")
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="order.retry_requested",
            order_id=order.pk,
            after={"status": order.status, "task": nxt.task},
        )
        transaction.on_commit(
            partial(current_app.send_task, nxt.task, args=[order.pk]), robust=True
        )
    logger.info(
        "operator retry enqueued",
        extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash, "task": nxt.task},
    )
    return nxt.task
