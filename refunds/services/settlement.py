"""What the pipeline calls around a deposit's settlement: the reserve check before USDT
leaves the vault, and the record of the refund a settlement paid."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.alerts import alert_raise
from core.audit import AuditEntry, audit_record, audit_record_many
from core.models import AlertSeverity
from orders.selectors import Order, OrderType
from refunds.models import Refund, RefundOrigin
from refunds.selectors import (
    reserve_available,
)
from refunds.services.records import RESERVE_SHORT_SETTLEMENT, S, refund_view, usdt_text

logger = logging.getLogger(__name__)

# --- the pipeline's side -----------------------------------------------------------------


def reserve_covers(*, amount: int, order_id: int, actor: str) -> bool:
    """Before a settlement pays `amount` USDT out of the vault: does the balance less the
    floor cover it? If not, raises the `reserve_short_settlement` alert and says False (the
    caller re-schedules; the order waits, neither lost nor failed)."""
    if amount <= 0:
        return True
    balance, floor = reserve_available()
    if balance - floor >= amount:
        return True
    alert_raise(
        key=RESERVE_SHORT_SETTLEMENT,
        severity=AlertSeverity.CRITICAL,
        source=actor,
        message=(
            f"settlement of order {order_id} ({usdt_text(amount)}) waits: the vault holds "
            f"{usdt_text(balance)}, floor {usdt_text(floor)}; fund the vault or lower "
            "RESERVE_FLOOR_USDT"
        ),
        details={"order_id": order_id, "amount": amount, "balance": balance, "floor": floor},
    )
    logger.warning("settlement waits for the reserve", extra={"order_id": order_id})
    return False


def _automatic(order: Order, *, tx_hash: str, actor: str, now: datetime) -> Refund:
    """The automatic Refund (unsaved) a deposit's confirmed settlement paid."""
    return Refund(
        order=order,
        amount=int(order.refund_usdt),
        reason=order.last_error or f"unspent part of the deposit ({order.outcome})",
        origin=RefundOrigin.AUTOMATIC,
        status=S.CONFIRMED,
        requested_by=actor,
        tx_hash=tx_hash,
        sent_at=now,
        confirmed_at=now,
    )


def refund_record_automatic(*, order: Order, tx_hash: str, actor: str) -> Refund | None:
    """Record the refund a deposit's settlement paid (refund_usdt > 0) as a CONFIRMED
    automatic Refund. Idempotent: one automatic refund per order (unique constraint). Runs
    in the caller's transaction (the one that marks the order settled)."""
    if order.order_type != OrderType.BUY or order.refund_usdt <= 0:
        return None
    existing = Refund.objects.filter(order=order, origin=RefundOrigin.AUTOMATIC).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            refund = _automatic(order, tx_hash=tx_hash, actor=actor, now=timezone.now())
            refund.save(force_insert=True)
            audit_record(
                actor=actor,
                action="refund.automatic",
                order_id=order.pk,
                after=refund_view(refund) | {"reason": refund.reason},
            )
    except IntegrityError:
        return Refund.objects.get(order=order, origin=RefundOrigin.AUTOMATIC)
    return refund


def refunds_record_automatic_many(*, orders: Sequence[Order], actor: str) -> list[Refund]:
    """`refund_record_automatic` for many settled orders at once (a settlement batch): one
    look-up of the automatic refunds that exist, one INSERT and one audit append for the
    rest; each order's refund is paid by its own `settlement_tx_hash`. Idempotent as the
    single form (one automatic refund per order; an order that has one is skipped). Runs in
    the caller's transaction, which holds the orders' row locks. Returns the refunds
    created."""
    due = [o for o in orders if o.order_type == OrderType.BUY and o.refund_usdt > 0]
    if not due:
        return []
    have = set(
        Refund.objects.filter(
            order_id__in=[o.pk for o in due], origin=RefundOrigin.AUTOMATIC
        ).values_list("order_id", flat=True)
    )
    now = timezone.now()
    refunds = Refund.objects.bulk_create(
        [
            _automatic(order, tx_hash=order.settlement_tx_hash, actor=actor, now=now)
            for order in due
            if order.pk not in have
        ]
    )
    if refunds:
        audit_record_many(
            [
                AuditEntry(
                    actor=actor,
                    action="refund.automatic",
                    order_id=refund.order_id,
                    after=refund_view(refund) | {"reason": refund.reason},
                )
                for refund in refunds
            ]
        )
    return refunds
