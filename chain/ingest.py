"""Turning confirmed vault logs into Bronco records: the listener's write side.

`chain_logs_commit` is the one transaction per batch: it locks the contract's checkpoint row,
writes one `ChainEvent` per new log, creates orders (and cancel requests) through the orders
app's services, quarantines what it cannot act on, and moves the checkpoint. The orders app
enqueues its pipeline on commit, so nothing leaves the process for a batch that rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import DataError, IntegrityError, transaction
from django.utils import timezone

from chain.client import RawLog, UndecodableLog, decode_log
from chain.events import CancelRequested, ContractEvent, Deposit, Redeem
from chain.models import ChainCursor, ChainEvent, QuarantinedLog
from core.alerts import alert_raise
from core.audit import audit_record
from core.models import Alert
from orders.exceptions import OrderError
from orders.models import OrderType
from orders.services import (
    ChainOrderRequest,
    order_create_from_chain,
    order_request_cancel,
    orders_create_from_chain,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    committed: int = 0
    duplicates: int = 0
    quarantined: int = 0
    checkpoint: int = 0


@dataclass(frozen=True)
class Checkpoint:
    block_number: int
    block_hash: str
    head_number: int


def cursor_ensure(*, chain_id: int, address: str, start_block: int) -> Checkpoint:
    """The contract's checkpoint, created at `start_block - 1` when there is none yet."""
    cursor, _ = ChainCursor.objects.get_or_create(
        chain_id=chain_id,
        address=address,
        defaults={"block_number": max(start_block, 0) - 1, "block_hash": ""},
    )
    return Checkpoint(cursor.block_number, cursor.block_hash, cursor.head_number)


def cursor_record_head(*, chain_id: int, address: str, head: int) -> None:
    ChainCursor.objects.filter(chain_id=chain_id, address=address).update(
        head_number=head, updated_at=timezone.now()
    )


def cursor_rebase_hash(*, chain_id: int, address: str, block_hash: str) -> None:
    """After a deep-reorg alert: remember the new canonical hash so it alerts once."""
    ChainCursor.objects.filter(chain_id=chain_id, address=address).update(block_hash=block_hash)


def chain_logs_commit(
    *,
    chain_id: int,
    vault: str,
    logs: Sequence[RawLog],
    to_block: int,
    to_block_hash: str,
    head: int,
    actor: str,
) -> BatchResult:
    """Act on every log of the confirmed range (checkpoint, to_block] and move the checkpoint
    to `to_block`, all in one transaction.

    Idempotent: the checkpoint row is locked first and logs at or below it are skipped, and a
    log already recorded (unique chain id, tx hash, log index) is skipped, so overlapping
    deliveries (subscription and backfill, or a restarted listener) never act twice.
    """
    with transaction.atomic():
        cursor = ChainCursor.objects.select_for_update().get(chain_id=chain_id, address=vault)
        if to_block <= cursor.block_number:
            cursor.head_number = head
            cursor.save(update_fields=["head_number", "updated_at"])
            return BatchResult(checkpoint=cursor.block_number)
        fresh = sorted(
            (log for log in logs if log.block_number > cursor.block_number),
            key=lambda log: (log.block_number, log.log_index),
        )
        tx_hashes = {log.tx_hash for log in fresh}
        seen = set(
            ChainEvent.objects.filter(chain_id=chain_id, tx_hash__in=tx_hashes).values_list(
                "tx_hash", "log_index"
            )
        ) | set(
            QuarantinedLog.objects.filter(chain_id=chain_id, tx_hash__in=tx_hashes).values_list(
                "tx_hash", "log_index"
            )
        )
        new_logs: list[RawLog] = []
        duplicates = 0
        for log in fresh:
            if log.key in seen:
                duplicates += 1
                continue
            seen.add(log.key)
            new_logs.append(log)
        events = _act_on_batch(chain_id=chain_id, vault=vault, logs=new_logs, actor=actor)
        quarantined = len(new_logs) - len(events)
        ChainEvent.objects.bulk_create(events)
        cursor.block_number = to_block
        cursor.block_hash = to_block_hash
        cursor.head_number = max(head, to_block)
        cursor.save(update_fields=["block_number", "block_hash", "head_number", "updated_at"])
    return BatchResult(
        committed=len(events), duplicates=duplicates, quarantined=quarantined, checkpoint=to_block
    )


def _act_on_batch(
    *, chain_id: int, vault: str, logs: Sequence[RawLog], actor: str
) -> list[ChainEvent]:
    """The ChainEvents to write for new `logs` (in chain order), their orders created; the
    logs it cannot act on are quarantined instead. Deposits and redeems become orders in one
    bulk step; should that fail on one bad log, every log is taken one at a time, so only
    that log is quarantined. Cancels run after, in order, as they name earlier deposits."""
    actionable: list[tuple[RawLog, ContractEvent]] = []
    requests: dict[tuple[str, int], ChainOrderRequest] = {}
    for log in logs:
        decoded = _decoded(chain_id=chain_id, vault=vault, log=log, actor=actor)
        if decoded is None:
            continue
        if isinstance(decoded, Deposit | Redeem):
            requests[log.key] = _order_request(chain_id=chain_id, event=decoded)
        actionable.append((log, decoded))
    order_ids = _orders_in_bulk(requests=requests, actor=actor)
    events = []
    for log, decoded in actionable:
        if order_ids is not None and log.key in order_ids:
            event = _event(chain_id=chain_id, log=log, decoded=decoded, order_id=order_ids[log.key])
        else:
            event = _act_on(chain_id=chain_id, log=log, decoded=decoded, actor=actor)
        if event is not None:
            events.append(event)
    return events


def _decoded(*, chain_id: int, vault: str, log: RawLog, actor: str) -> ContractEvent | None:
    if log.address.lower() != vault.lower():
        log_quarantine(chain_id=chain_id, log=log, reason="foreign_address", actor=actor)
        return None
    try:
        return decode_log(log)
    except UndecodableLog as exc:
        log_quarantine(
            chain_id=chain_id, log=log, reason=exc.reason, detail=exc.detail, actor=actor
        )
        return None


def _orders_in_bulk(
    *, requests: dict[tuple[str, int], ChainOrderRequest], actor: str
) -> dict[tuple[str, int], int] | None:
    """Order ids by log key for the batch's deposits and redeems, or None when the bulk step
    failed (none of it is kept) and the caller must go one log at a time."""
    if not requests:
        return {}
    try:
        with transaction.atomic():
            results = orders_create_from_chain(requests=list(requests.values()), actor=actor)
    except (ValueError, TypeError, OrderError, IntegrityError, DataError) as exc:
        logger.warning("bulk order creation failed (%s); one log at a time", exc)
        return None
    return {key: order.pk for key, (order, _created) in zip(requests, results, strict=True)}


def _act_on(*, chain_id: int, log: RawLog, decoded: ContractEvent, actor: str) -> ChainEvent | None:
    """The ChainEvent to write for one decoded log (its order created or its cancel
    recorded), or None when it is quarantined."""
    try:
        with transaction.atomic():
            order_id = _order_for(chain_id=chain_id, decoded=decoded, actor=actor)
    except _Unactionable as exc:
        log_quarantine(
            chain_id=chain_id, log=log, reason=exc.reason, detail=exc.detail, actor=actor
        )
        return None
    except (ValueError, TypeError, OrderError, IntegrityError, DataError) as exc:
        log_quarantine(
            chain_id=chain_id,
            log=log,
            reason="rejected",
            detail=f"{type(exc).__name__}: {exc}",
            actor=actor,
        )
        return None
    return _event(chain_id=chain_id, log=log, decoded=decoded, order_id=order_id)


def _event(
    *, chain_id: int, log: RawLog, decoded: ContractEvent, order_id: int | None
) -> ChainEvent:
    return ChainEvent(
        chain_id=chain_id,
        tx_hash=log.tx_hash,
        log_index=log.log_index,
        block_number=log.block_number,
        block_hash=log.block_hash,
        address=log.address,
        name=decoded.name,
        args=decoded.abi_args(),
        order_id=order_id,
    )


class _Unactionable(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _order_request(*, chain_id: int, event: Deposit | Redeem) -> ChainOrderRequest:
    is_buy = isinstance(event, Deposit)
    return ChainOrderRequest(
        chain_id=chain_id,
        order_type=OrderType.BUY if is_buy else OrderType.SELL,
        onchain_id=event.deposit_id if is_buy else event.redeem_id,
        tx_hash=event.tx_hash,
        log_index=event.log_index,
        user_address=event.user,
        symbol=event.symbol,
        usdt_amount=event.usdt_units if is_buy else 0,
        token_amount=0 if is_buy else event.token_units,
    )


def _order_for(*, chain_id: int, decoded: ContractEvent, actor: str) -> int | None:
    if isinstance(decoded, Deposit | Redeem):
        request = _order_request(chain_id=chain_id, event=decoded)
        order, _created = order_create_from_chain(request=request, actor=actor)
        return order.pk
    if isinstance(decoded, CancelRequested):
        order = order_request_cancel(
            chain_id=chain_id,
            deposit_id=decoded.deposit_id,
            tx_hash=decoded.tx_hash,
            actor=actor,
        )
        if order is None:
            raise _Unactionable("cancel_for_unknown_deposit", f"deposit {decoded.deposit_id}")
        return order.pk
    return None


def log_quarantine(
    *, chain_id: int, log: RawLog, reason: str, actor: str, detail: str = ""
) -> QuarantinedLog:
    """Park a log the listener cannot act on, with an audit entry and an alert line.
    Idempotent per (chain id, tx hash, log index)."""
    row, created = QuarantinedLog.objects.get_or_create(
        chain_id=chain_id,
        tx_hash=log.tx_hash,
        log_index=log.log_index,
        defaults={
            "block_number": log.block_number,
            "block_hash": log.block_hash,
            "address": log.address,
            "topics": list(log.topics),
            "data": log.data,
            "reason": reason,
            "detail": detail[:2000],
        },
    )
    if created:
        audit_record(
            actor=actor,
            action="chain.log_quarantined",
            after={
                "tx_hash": log.tx_hash,
                "log_index": log.log_index,
                "address": log.address,
                "reason": reason,
            },
        )
        logger.error(
            "ALERT chain log quarantined: %s %s#%s from %s (%s)",
            reason,
            log.tx_hash,
            log.log_index,
            log.address,
            detail,
            extra={"tx_hash": log.tx_hash, "alert": "chain_quarantine"},
        )
    return row


def chain_alert_raise(
    *,
    chain_id: int,
    kind: str,
    message: str,
    details: dict,
    actor: str,
    order_id: int | None = None,
) -> Alert:
    """Raise critical alert `chain.<kind>` (the operators' one alert list: admin, mail,
    webhook) with an audit entry. Never undoes anything."""
    with transaction.atomic():
        audit_record(actor=actor, action=f"chain.alert.{kind}", order_id=order_id, after=details)
        alert = alert_raise(
            key=f"chain.{kind}",
            message=message,
            severity="critical",
            source=actor,
            details={"chain_id": chain_id, **details},
        )
    logger.critical("ALERT %s: %s", kind, message, extra={"alert": kind, **details})
    return alert


def removed_log_handle(*, chain_id: int, log: RawLog, actor: str) -> bool:
    """A `removed: true` log from the node. If we had acted on it (it was confirmed), mark the
    event removed and raise an alert: the order stands, an operator decides. Returns True
    when it alerted; False when the log was never acted on (nothing to do)."""
    event = ChainEvent.objects.filter(
        chain_id=chain_id,
        tx_hash=log.tx_hash,
        log_index=log.log_index,
        block_hash=log.block_hash,
        removed_at__isnull=True,
    ).first()
    if event is None:
        return False
    with transaction.atomic():
        ChainEvent.objects.filter(pk=event.pk).update(removed_at=timezone.now())
        chain_alert_raise(
            chain_id=chain_id,
            kind="confirmed_event_removed",
            message=f"confirmed {event.name} {log.tx_hash}#{log.log_index} removed by a reorg",
            details={
                "tx_hash": log.tx_hash,
                "log_index": log.log_index,
                "block_number": log.block_number,
                "event": event.name,
                "order_id": event.order_id,
            },
            actor=actor,
            order_id=event.order_id,
        )
    return True
