"""The Order.

Order status only changes through `orders.state`, which owns the transition table.
"""

import uuid

from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower

from core.money import UintField


def new_client_id() -> str:
    """Our id for an order at the broker (Futu `remark`, at most 64 bytes)."""
    return f"bronco-{uuid.uuid4().hex}"


class OrderType(models.TextChoices):
    BUY = "BUY", "Buy (deposit)"
    SELL = "SELL", "Sell (redeem)"


class Waiting(models.TextChoices):
    """Why a booked order is waiting in the book (`Order.waiting_for`)."""

    NOTHING = "", "Not waiting"
    MARKET = "market", "Waiting for the market to open"
    PRICE = "price", "Waiting for the price to reach the user's bound"


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
    client_id = models.CharField(max_length=64, default=new_client_id)  # unique: Meta
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
    chain_tx_hash = models.CharField(max_length=66)
    log_index = models.PositiveIntegerField(default=0)
    user_address = models.CharField(max_length=42)
    symbol = models.CharField(max_length=32, help_text="Vault symbol, e.g. AAPL")
    stock_code = models.CharField(max_length=32, help_text="Futu code, e.g. US.AAPL")

    # What the user brought: USDT for a BUY, stock tokens for a SELL (base units).
    usdt_amount = UintField(default=0)
    token_amount = UintField(default=0)

    # The broker order.
    qty = models.DecimalField(max_digits=24, decimal_places=6, null=True, blank=True)
    price = models.DecimalField(
        max_digits=24, decimal_places=6, null=True, blank=True, help_text="Locked limit price"
    )
    futu_order_id = models.CharField(max_length=64, blank=True)
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
    settlement_tx_hash = models.CharField(max_length=66, blank=True)

    # Netting: when the order joined its symbol's book, and the cycle it takes part in now.
    booked_at = models.DateTimeField(null=True, blank=True)
    cycle = models.ForeignKey(
        "orders.Cycle",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="orders",
        help_text="The cycle this order takes part in now (EXECUTING); empty in the book",
    )

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
    price_bound = UintField(
        default=0,
        help_text="The user's price bound from the vault, USDT base units per whole share: "
        "the most a deposit pays, the least a redeem takes (0: none)",
    )
    expires_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The order's own end: what is left of it is refunded (returned) then. "
        "Orders waiting for the market outlive their deadline until this",
    )
    waiting_for = models.CharField(
        max_length=16,
        choices=Waiting.choices,
        default=Waiting.NOTHING,
        blank=True,
        help_text="Set while the order waits in the book for its market to open or for the "
        "price to reach its bound; the deadline does not end it then, only its expiry or a "
        "cancel",
    )
    waiting_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-id",)
        # Uniqueness and plain indexes of the string columns are declared here, not with
        # `unique=True` / `db_index=True` on the field: for those PostgreSQL gets a second,
        # `varchar_pattern_ops` index per column (for LIKE 'x%', which nothing asks), and
        # every row a backfill COPYs paid for both.
        constraints = [
            models.UniqueConstraint(fields=("client_id",), name="order_unique_client_id"),
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
            models.Index(fields=("chain_tx_hash",), name="order_chain_tx_hash"),
            models.Index(fields=("user_address",), name="order_user_address"),
            models.Index(fields=("stock_code",), name="order_stock_code"),
            models.Index(fields=("futu_order_id",), name="order_futu_order_id"),
            models.Index(fields=("settlement_tx_hash",), name="order_settlement_tx_hash"),
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
            # The public API's `orders?address=`: a user's orders (any letter case), newest
            # first, one keyset page at a time.
            models.Index(Lower("user_address"), F("id").desc(), name="order_by_user_newest"),
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


class CycleStatus(models.TextChoices):
    OPEN = "OPEN", "Planned; its broker order is to be placed"
    PLACED = "PLACED", "Its broker order works at the broker"
    ALLOCATED = "ALLOCATED", "Allocated to its participants"


class Cycle(models.Model):
    """One netting cycle of one symbol: its participants priced on one quote, crossed, and
    the net sent to the broker as one order (`client_id` is its Futu remark), all allocated
    at one price. Token amounts in 10^-18 share units (signed where marked), USDT in base
    units, prices in the market currency per share."""

    symbol = models.CharField(max_length=32, db_index=True)
    stock_code = models.CharField(max_length=32)
    client_id = models.CharField(max_length=64, unique=True, default=new_client_id)
    status = models.CharField(max_length=10, choices=CycleStatus.choices, default=CycleStatus.OPEN)
    version = models.PositiveIntegerField(default=0)

    quote_price = models.DecimalField(max_digits=24, decimal_places=6)
    ccy_per_usdt = models.DecimalField(max_digits=24, decimal_places=6)
    lot_size = models.PositiveIntegerField()
    fee_rate = models.DecimalField(max_digits=10, decimal_places=6)
    fee_flat_usdt = UintField(default=0)

    demand_units = UintField(default=0, help_text="Buyers' demand at the quote")
    supply_units = UintField(default=0, help_text="Sellers' tokens")
    broker_units = models.DecimalField(
        max_digits=78, decimal_places=0, default=0, help_text="Signed: + buy, - sell"
    )
    limit_price = models.DecimalField(max_digits=24, decimal_places=6, null=True, blank=True)
    futu_order_id = models.CharField(max_length=64, blank=True)
    cancel_sent_at = models.DateTimeField(null=True, blank=True)
    filled_units = models.DecimalField(
        max_digits=78, decimal_places=0, default=0, help_text="Signed broker fill"
    )
    price = models.DecimalField(
        max_digits=24,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="The one price of the cycle: the broker's average fill, or the quote",
    )
    broker_fee_usdt = UintField(default=0, help_text="The broker's fee: Bronco's cost")
    broker_fee_read_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the broker's fee was read (order_fee_query); empty while unknown",
    )
    inventory_before = UintField(default=0)
    inventory_after = UintField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    placed_at = models.DateTimeField(null=True, blank=True)
    allocated_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=CycleStatus.values), name="cycle_status_valid"
            ),
            # At most one cycle of a symbol in flight at a time.
            models.UniqueConstraint(
                fields=("symbol",),
                condition=~Q(status="ALLOCATED"),
                name="cycle_one_in_flight_per_symbol",
            ),
        ]

    def __str__(self) -> str:
        return f"Cycle {self.pk} {self.symbol} {self.status}"


class Allocation(models.Model):
    """What one order got in one cycle: token units bought (deposit) or sold (redeem), the
    USDT cost or proceeds, and Bronco's fee. One row per order per cycle."""

    cycle = models.ForeignKey(Cycle, on_delete=models.PROTECT, related_name="allocations")
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="allocations")
    order_type = models.CharField(max_length=4, choices=OrderType.choices)
    token_units = UintField()
    usdt_units = UintField(help_text="Cost (deposit) or proceeds (redeem)")
    fee_units = UintField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("cycle", "order"), name="allocation_once_per_cycle"),
        ]

    def __str__(self) -> str:
        return f"cycle {self.cycle_id} order {self.order_id}: {self.token_units}"


class HouseInventory(models.Model):
    """Shares Bronco holds at the broker that no token represents, per symbol (10^-18 share
    units). Never negative (a CHECK); capped by `orders.netting.cycles.inventory_cap_units`
    (NETTING_INVENTORY_CAP_LOTS lots, or NETTING_INVENTORY_CAP_USDT worth)."""

    symbol = models.CharField(max_length=32, unique=True)
    token_units = UintField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "house inventory"
        constraints = [
            models.CheckConstraint(
                condition=Q(token_units__gte=0), name="house_inventory_never_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.symbol}: {self.token_units}"
