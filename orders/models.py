"""The Order and its append-only audit trail.

Order status only changes through `orders.state`, which owns the transition table.
"""

import uuid

from django.db import models
from django.db.models import Q

from orders.exceptions import AuditImmutable
from orders.money import UintField


def new_client_id() -> str:
    """Our id for an order at the broker (Futu `remark`, at most 64 bytes)."""
    return f"bronco-{uuid.uuid4().hex}"


class OrderType(models.TextChoices):
    BUY = "BUY", "Buy (deposit)"
    SELL = "SELL", "Sell (redeem)"


class OrderStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    EXECUTING = "EXECUTING", "Executing at the broker"
    SETTLING = "SETTLING", "Settling on chain"
    EXECUTED = "EXECUTED", "Executed"
    CANCELED = "CANCELED", "Canceled"
    FAILED = "FAILED", "Failed"


TERMINAL_STATUSES = frozenset({OrderStatus.EXECUTED, OrderStatus.CANCELED, OrderStatus.FAILED})
OPEN_STATUSES = frozenset(set(OrderStatus) - TERMINAL_STATUSES)
# Sorted lists for constraints and indexes, so migrations are stable.
_TERMINAL_VALUES = sorted(s.value for s in TERMINAL_STATUSES)
_OPEN_VALUES = sorted(s.value for s in OPEN_STATUSES)

_NON_NEGATIVE = (
    "usdt_amount",
    "token_amount",
    "qty",
    "price",
    "filled_qty",
    "avg_fill_price",
    "cost_usdt",
    "fees_usdt",
    "refund_usdt",
    "manual_refund_usdt",
    "payout_usdt",
    "tokens_minted",
    "tokens_returned",
)


class Order(models.Model):
    """One chain event (Deposit or Redeem) becomes exactly one Order.

    Amounts on chain are integers of base units (USDT: 6 decimals, stock tokens: 18);
    broker quantities and prices are Decimals.
    """

    # Identity: the internal id is the primary key; client_id is what the broker sees.
    client_id = models.CharField(max_length=64, unique=True, default=new_client_id)
    order_type = models.CharField(max_length=4, choices=OrderType.choices)
    status = models.CharField(
        max_length=10, choices=OrderStatus.choices, default=OrderStatus.PENDING
    )
    version = models.PositiveIntegerField(default=0)

    # Where it came from on chain.
    chain_id = models.BigIntegerField()
    onchain_id = models.DecimalField(
        max_digits=78, decimal_places=0, help_text="Vault deposit id or redeem id"
    )
    chain_tx_hash = models.CharField(max_length=66, db_index=True)
    log_index = models.PositiveIntegerField(default=0)
    user_address = models.CharField(max_length=42, db_index=True)
    symbol = models.CharField(max_length=32, help_text="Vault symbol, e.g. AAPL")
    stock_code = models.CharField(max_length=32, db_index=True, help_text="Futu code, e.g. US.AAPL")

    # What the user brought: USDT for a BUY, stock tokens for a SELL (base units).
    usdt_amount = UintField(default=0)
    token_amount = UintField(default=0)

    # The broker order.
    qty = models.DecimalField(max_digits=24, decimal_places=6, null=True, blank=True)
    price = models.DecimalField(
        max_digits=24, decimal_places=6, null=True, blank=True, help_text="Locked limit price"
    )
    futu_order_id = models.CharField(max_length=64, blank=True, db_index=True)
    filled_qty = models.DecimalField(max_digits=24, decimal_places=6, default=0)
    avg_fill_price = models.DecimalField(max_digits=24, decimal_places=6, null=True, blank=True)

    # Settlement (base units).
    cost_usdt = UintField(
        default=0, help_text="USDT spent on shares (BUY) or gross proceeds (SELL)"
    )
    fees_usdt = UintField(default=0)
    refund_usdt = UintField(default=0)
    manual_refund_usdt = UintField(
        default=0,
        help_text=(
            "USDT refunded manually by operators before settlement (refunds app); a deposit "
            "trades and settles only usdt_amount - manual_refund_usdt"
        ),
    )
    payout_usdt = UintField(default=0)
    tokens_minted = UintField(default=0)
    tokens_returned = UintField(default=0)
    outcome = models.CharField(
        max_length=10,
        choices=OrderStatus.choices,
        blank=True,
        help_text="Terminal status this order takes once its settlement is confirmed",
    )
    settlement_tx_hash = models.CharField(max_length=66, blank=True, db_index=True)

    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    broker_cancel_sent_at = models.DateTimeField(null=True, blank=True)
    scan_claimed_at = models.DateTimeField(
        null=True, blank=True, help_text="Bookkeeping of the compensation scan, not a transition"
    )
    deadline = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.UniqueConstraint(
                fields=("chain_id", "order_type", "onchain_id"), name="order_unique_onchain_id"
            ),
            models.CheckConstraint(
                condition=Q(status__in=OrderStatus.values), name="order_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(order_type__in=OrderType.values), name="order_type_valid"
            ),
            models.CheckConstraint(
                condition=Q(outcome="") | Q(outcome__in=_TERMINAL_VALUES),
                name="order_outcome_terminal",
            ),
            *[
                models.CheckConstraint(
                    condition=Q(**{f"{field}__gte": 0}) | Q(**{f"{field}__isnull": True}),
                    name=f"order_{field}_non_negative",
                )
                for field in _NON_NEGATIVE
            ],
        ]
        indexes = [
            models.Index(
                fields=("deadline",),
                name="order_open_by_deadline",
                condition=Q(status__in=_OPEN_VALUES),
            ),
        ]
        # Operator actions in Django admin (orders.admin), each audited as admin:<username>.
        permissions = [
            ("retry_order", "Can re-enqueue an order's current pipeline stage"),
            ("cancel_order", "Can cancel an open deposit order as an operator"),
            ("refund_order", "Can request a manual refund of an order"),
        ]

    def __str__(self) -> str:
        return f"Order {self.pk} {self.order_type} {self.stock_code} {self.status}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class AuditLog(models.Model):
    """Append-only record of every money-moving step, chained by hash.

    Each row stores the hash of its own content together with the previous row's hash, so a
    row altered or removed behind the model's back breaks the chain (`verify_audit`). The
    model refuses save-over and delete; a database trigger refuses UPDATE and DELETE.
    """

    seq = models.BigIntegerField(unique=True)
    created_at = models.DateTimeField()
    actor = models.CharField(max_length=200, help_text="task, command or admin user")
    action = models.CharField(max_length=64, db_index=True)
    order = models.ForeignKey(
        Order, on_delete=models.PROTECT, null=True, blank=True, related_name="audit_entries"
    )
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ("seq",)

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor}"

    def save(self, *args: object, **kwargs: object) -> None:
        if not self._state.adding:
            raise AuditImmutable("audit entries are append-only; this one cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        raise AuditImmutable("audit entries are append-only; this one cannot be deleted")


class AlertSeverity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class Alert(models.Model):
    """Something an operator must look at. One open alert per key: raising it again while it
    is open bumps its count instead of adding a row."""

    key = models.CharField(max_length=120, help_text="rule or condition, e.g. listener_lag")
    severity = models.CharField(
        max_length=10, choices=AlertSeverity.choices, default=AlertSeverity.WARNING
    )
    source = models.CharField(max_length=120, help_text="component that raised it")
    message = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    count = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    last_seen_at = models.DateTimeField(auto_now=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-last_seen_at",)
        constraints = [
            models.UniqueConstraint(
                fields=("key",),
                condition=Q(resolved_at__isnull=True),
                name="alert_one_open_per_key",
            ),
            models.CheckConstraint(
                condition=Q(severity__in=AlertSeverity.values), name="alert_severity_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.key}: {self.message[:60]}"
