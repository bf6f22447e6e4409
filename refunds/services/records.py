"""Changing a refund record: conditional status moves with their audit entry, and the
helpers every refund service shares."""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from django.db import transaction
from django.utils import timezone

from core.audit import audit_record
from core.money import units_to_usdt
from refunds.models import Refund, RefundStatus

logger = logging.getLogger(__name__)

S = RefundStatus
CHECK_TASK = "refunds.tasks.refund_check"
RESERVE_SHORT = "reserve_short"
RESERVE_SHORT_SETTLEMENT = "reserve_short_settlement"
_CHANNEL_PREFIXES = ("admin:", "cli:", "operator:")


def operator_identity(operator: str) -> str:
    """One person across channels: "admin:Alice", "cli:alice" and "alice" are the same."""
    name = operator.strip().lower()
    for prefix in _CHANNEL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :].strip()
    return name


def usdt_text(units: int) -> str:
    return f"{units_to_usdt(units)} USDT"


def refund_view(refund: Refund) -> dict[str, Any]:
    return {
        "refund_id": refund.pk,
        "onchain_id": int(refund.onchain_id),
        "amount": int(refund.amount),
        "origin": refund.origin,
        "status": refund.status,
        "requested_by": refund.requested_by,
        "approved_by": refund.approved_by,
        "tx_hash": refund.tx_hash,
    }


def refund_move(
    refund: Refund,
    *,
    from_statuses: tuple[str, ...],
    to_status: str,
    actor: str,
    action: str,
    **changes: Any,
) -> bool:
    """Conditional UPDATE of the refund's status with its audit entry; False when the refund
    is no longer in one of `from_statuses` (someone else moved it first)."""
    before = refund_view(refund)
    with transaction.atomic():
        updated = Refund.objects.filter(pk=refund.pk, status__in=from_statuses).update(
            status=to_status, updated_at=timezone.now(), **changes
        )
        if not updated:
            return False
        refund.status = to_status
        for key, value in changes.items():
            setattr(refund, key, value)
        audit_record(
            actor=actor,
            action=action,
            order_id=refund.order_id,
            before=before,
            after=refund_view(refund),
        )
    return True


def enqueue_on_commit(task: str, *args: Any, countdown: float | None = None) -> None:
    transaction.on_commit(
        lambda: current_app.send_task(task, args=list(args), countdown=countdown), robust=True
    )
