"""The Order.

Order status only changes through `orders.state`, which owns the transition table.
"""

import uuid

from django.db import models
from django.db.models import Q

from core.money import UintField


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
    # One live pipeline run per order (orders.runs): bookkeeping, not transitions.
    run_gen = models.PositiveIntegerField(
        default=0,
        help_text="Generation of the order's live pipeline run; a task of another is dropped",
    )
    run_lease_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The live run renews this at every step; past it, the compensation scan "
        "takes the order over",
    )
    # A hold (orders.services.order_hold): no settlement is sent while it is set.
    held_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set while the order is held (its chain event was replaced by a reorg, or "
        "the vault refused its settlement): nothing is settled until it is released",
    )
    hold_reason = models.CharField(max_length=200, blank=True)
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
            # The compensation scan: open orders whose run lease ran out.
            models.Index(
                fields=("run_lease_until",),
                name="order_open_by_run_lease",
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
