"""Refund records: every USDT refund of a deposit, manual (operators) or automatic (the
pipeline's settlement refund), with who asked, who approved, and where it stands on chain.

The status of a Refund changes only through `refunds.services` (conditional UPDATEs, each
audited).
"""

import secrets

from django.db import models
from django.db.models import F, Q

from core.money import UintField


def new_onchain_refund_id() -> int:
    """The refund id the vault sees (refundDeposit's refundId). Random rather than the
    primary key, so a database rebuilt against a long-lived chain never reuses a paid id."""
    return secrets.randbits(63) + 1


class RefundOrigin(models.TextChoices):
    AUTOMATIC = "automatic", "Automatic (the order's settlement)"
    MANUAL = "manual", "Manual (an operator)"


class RefundStatus(models.TextChoices):
    AWAITING_APPROVAL = "AWAITING_APPROVAL", "Awaiting a second operator"
    APPROVED = "APPROVED", "Approved, to be paid"
    WAITING_RESERVE = "WAITING_RESERVE", "Waiting for the vault reserve"
    SENT = "SENT", "Sent on chain"
    CONFIRMED = "CONFIRMED", "Paid on chain"
    FAILED = "FAILED", "Failed (amount returned to the order's settlement)"
    REJECTED = "REJECTED", "Rejected at approval (order no longer refundable)"


# Manual refunds that hold units of their order which the vault has not yet paid: the order's
# settlement waits for them.
IN_FLIGHT_STATUSES = (RefundStatus.APPROVED, RefundStatus.WAITING_RESERVE, RefundStatus.SENT)
FINAL_STATUSES = (RefundStatus.CONFIRMED, RefundStatus.FAILED, RefundStatus.REJECTED)


class Refund(models.Model):
    order = models.ForeignKey("orders.Order", on_delete=models.PROTECT, related_name="refunds")
    onchain_id = UintField(
        unique=True, default=new_onchain_refund_id, help_text="Refund id on chain (manual)"
    )
    amount = UintField(help_text="USDT base units (6 decimals)")
    reason = models.TextField()
    origin = models.CharField(max_length=10, choices=RefundOrigin.choices)
    status = models.CharField(max_length=20, choices=RefundStatus.choices)
    requested_by = models.CharField(max_length=200)
    approved_by = models.CharField(max_length=200, blank=True)
    tx_hash = models.CharField(max_length=66, blank=True, db_index=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive"),
            models.CheckConstraint(
                condition=Q(status__in=RefundStatus.values), name="refund_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(origin__in=RefundOrigin.values), name="refund_origin_valid"
            ),
            models.CheckConstraint(condition=~Q(requested_by=""), name="refund_requester_named"),
            models.CheckConstraint(
                condition=Q(approved_by="") | ~Q(approved_by=F("requested_by")),
                name="refund_approver_not_requester",
            ),
            # The pipeline records its settlement refund once per order.
            models.UniqueConstraint(
                fields=("order",),
                condition=Q(origin="automatic"),
                name="refund_one_automatic_per_order",
            ),
        ]
        indexes = [
            models.Index(
                fields=("status", "updated_at"),
                name="refund_open_by_status",
                condition=Q(status__in=["APPROVED", "WAITING_RESERVE", "SENT"]),
            ),
        ]
        permissions = [
            ("request_refund", "Can request a manual refund"),
            ("approve_refund", "Can approve a manual refund above the threshold"),
        ]

    def __str__(self) -> str:
        return f"Refund {self.pk} of order {self.order_id}: {self.amount} {self.status}"
