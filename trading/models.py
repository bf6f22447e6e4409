"""Broker-order records: what Bronco asked the broker for, per client id (Futu's remark).

A record exists before Futu is ever called: the intent to place (attempt count and time)
is committed first, so a retry after any crash knows an order may exist at the broker and
looks for it in the open list *and* the history before placing again. Keyed by client id,
not by Bronco order: one record per broker order, whoever asked for it (an order's run
today, a netting cycle later).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class BrokerOrderRecord(models.Model):
    NEW = "NEW"  # no broker order known yet (maybe an attempt in flight)
    ABANDONED = "ABANDONED"  # closed before any order reached the broker: never placed

    client_id = models.CharField(max_length=64, unique=True)
    code = models.CharField(max_length=32)
    side = models.CharField(max_length=4)
    qty = models.DecimalField(max_digits=24, decimal_places=8)
    limit_price = models.DecimalField(max_digits=24, decimal_places=8)
    # NEW, ABANDONED, or the broker's status (trading.broker.BrokerStatus).
    status = models.CharField(max_length=16, default=NEW)
    raw_status = models.CharField(max_length=32, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # While set and in the future, a worker is calling Futu for this client id.
    attempt_lease_until = models.DateTimeField(null=True, blank=True)
    broker_order_id = models.CharField(max_length=64, blank=True, default="")
    placed_at = models.DateTimeField(null=True, blank=True)
    filled_qty = models.DecimalField(max_digits=24, decimal_places=8, default=0)
    avg_fill_price = models.DecimalField(max_digits=24, decimal_places=8, null=True, blank=True)
    # The broker's own fee (order_fee_query), market currency, and its items.
    fee = models.DecimalField(max_digits=24, decimal_places=8, null=True, blank=True)
    fee_details = models.JSONField(default=list, blank=True)
    cancel_requests = models.PositiveIntegerField(default=0)
    last_cancel_at = models.DateTimeField(null=True, blank=True)
    cancel_alerted = models.BooleanField(default=False)
    # When the broker first reported the order final, and until when its fills may still
    # change (deals cancelled or corrected): watched until then.
    final_at = models.DateTimeField(null=True, blank=True)
    watch_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(qty__gt=0), name="broker_record_qty_positive"),
            models.CheckConstraint(
                condition=Q(filled_qty__gte=0), name="broker_record_filled_non_negative"
            ),
            models.CheckConstraint(
                condition=Q(limit_price__gt=0), name="broker_record_price_positive"
            ),
        ]
        indexes = [
            models.Index(
                fields=["watch_until"],
                name="broker_record_watch",
                condition=Q(watch_until__isnull=False),
            )
        ]

    def __str__(self) -> str:
        return f"{self.client_id} -> {self.broker_order_id or '-'} ({self.status})"


class BrokerFillCorrection(models.Model):
    """A compensation case: the broker changed an order's fills after Bronco took them as
    final (deals cancelled or corrected, FILL_CANCELLED). Operators settle what the vault
    owes or is owed; `resolved_at` closes the case."""

    record = models.ForeignKey(BrokerOrderRecord, on_delete=models.PROTECT, related_name="+")
    client_id = models.CharField(max_length=64)
    broker_order_id = models.CharField(max_length=64)
    before_qty = models.DecimalField(max_digits=24, decimal_places=8)
    before_avg_price = models.DecimalField(max_digits=24, decimal_places=8, null=True)
    after_qty = models.DecimalField(max_digits=24, decimal_places=8)
    after_avg_price = models.DecimalField(max_digits=24, decimal_places=8, null=True)
    raw_status = models.CharField(max_length=32, blank=True, default="")
    detected_at = models.DateTimeField(auto_now_add=True)
    # What the vault owes or is owed (trading.compensation), once the fill was allocated:
    # totals and one line per affected allocation. Signed: + the vault owes, - it is owed.
    assessed_at = models.DateTimeField(null=True, blank=True)
    allocation_ref = models.CharField(max_length=64, blank=True, default="")
    shares_owed_units = models.DecimalField(
        max_digits=78, decimal_places=0, null=True, blank=True, help_text="10^-18 share units"
    )
    usdt_owed_units = models.DecimalField(
        max_digits=78, decimal_places=0, null=True, blank=True, help_text="USDT base units"
    )
    broker_cash_units = models.DecimalField(
        max_digits=78,
        decimal_places=0,
        null=True,
        blank=True,
        help_text="USDT base units the broker returned (+) or took (-)",
    )
    compensation = models.JSONField(default=list, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return f"{self.client_id}: {self.before_qty} -> {self.after_qty}"
