"""Compensation: find open orders that stopped moving and say which stage re-drives them.

Safe to run concurrently with itself and with the pipeline: rows are claimed with
`select_for_update(skip_locked=True)` plus a conditional UPDATE of `scan_claimed_at`, so two
scans never claim the same order in one period; and re-driving a stage that already ran
does nothing, because every stage re-reads state first.
"""

from collections.abc import Iterator

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from orders import pipeline
from orders.models import OPEN_STATUSES, Order, OrderStatus

_STAGE_BY_STATUS = {
    OrderStatus.PENDING: pipeline.VALIDATE,
    OrderStatus.EXECUTING: pipeline.POLL,
    OrderStatus.SETTLING: pipeline.SETTLE,
}


def next_stage_for(*, order_id: int) -> pipeline.Next | None:
    status = Order.objects.filter(pk=order_id).values_list("status", flat=True).first()
    task = _STAGE_BY_STATUS.get(status)
    return pipeline.Next(task) if task else None


def stalled_orders_claim(*, limit: int = 500) -> Iterator[tuple[int, pipeline.Next]]:
    """Claim open orders with no progress for ORDER_STALL_SECONDS (or past their deadline
    and not touched since) and yield (order id, stage to re-drive)."""
    now = timezone.now()
    stalled_before = now - timezone.timedelta(seconds=settings.ORDER_STALL_SECONDS)
    with transaction.atomic():
        rows = list(
            Order.objects.filter(status__in=[s.value for s in OPEN_STATUSES])
            .filter(Q(updated_at__lt=stalled_before))
            .filter(Q(scan_claimed_at__isnull=True) | Q(scan_claimed_at__lt=stalled_before))
            .order_by("pk")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", "status", "scan_claimed_at")[:limit]
        )
        claimed = []
        for pk, status, seen in rows:
            if Order.objects.filter(pk=pk, scan_claimed_at=seen).update(scan_claimed_at=now):
                claimed.append((pk, status))
    for pk, status in claimed:
        yield pk, pipeline.Next(_STAGE_BY_STATUS[status])
