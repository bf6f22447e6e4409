"""Reads of the order lifecycle that other apps make (refunds, ops). Other apps reach orders
only here and through `orders.services` (`make lint` enforces it for refunds); the status
and type vocabularies are part of what they read, so they are named here too.
"""

from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Case, F, Q, QuerySet, Sum, When
from django.db.models.functions import Lower

from orders.models import (
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    Allocation,
    Cycle,
    CycleStatus,
    Order,
    OrderStatus,
    OrderType,
)
from trading.compensation import AllocationShare, FillAllocations

__all__ = [
    "OPEN_STATUSES",
    "TERMINAL_STATUSES",
    "Order",
    "OrderStatus",
    "OrderType",
    "broker_fill_allocations",
    "order_get",
    "order_lock",
    "orders_by_tx",
    "orders_of_address",
    "order_by_vault_id",
    "allocations_of",
    "order_usdt_remaining",
    "settling_usdt_owed",
    "netting_estimate",
    "NettingEstimate",
]


def order_get(*, order_id: int) -> Order | None:
    return Order.objects.filter(pk=order_id).first()


def order_lock(*, order_id: int) -> Order | None:
    """The order with its row locked until the caller's transaction ends (call inside
    `transaction.atomic()`), or None. Orders are always locked before refunds, and one
    order at a time, so lock order is the same everywhere."""
    return Order.objects.select_for_update(of=("self",)).filter(pk=order_id).first()


def order_usdt_remaining(order: Order) -> int:
    """USDT base units a deposit still has to spend or refund: the deposit less manual
    refunds, less what its netting cycles spent (cost) and charged (Bronco's fee) so far.
    Negative never for a consistent order; the one formula for the cycles and refunds."""
    return (
        int(order.usdt_amount)
        - int(order.manual_refund_usdt)
        - int(order.cost_usdt)
        - int(order.fees_usdt)
    )


def settling_usdt_owed() -> int:
    """USDT base units that orders in SETTLING will pay out of the vault: the refunds of
    deposits and the payouts of redeems whose settlement has not confirmed yet."""
    total = Order.objects.filter(status=OrderStatus.SETTLING).aggregate(
        total=Sum(
            Case(
                When(order_type=OrderType.BUY, then=F("refund_usdt")),
                default=F("payout_usdt"),
            )
        )
    )["total"]
    return int(total or 0)


# Reads of the public API (api app). Each is served by an index (orders 0013_d_api_indexes).


def order_by_vault_id(*, chain_id: int, order_type: str, onchain_id: int) -> Order | None:
    """The order of a vault deposit id (BUY) or redeem id (SELL) on `chain_id`."""
    return Order.objects.filter(
        chain_id=chain_id, order_type=order_type, onchain_id=onchain_id
    ).first()


def orders_of_address(
    *, address: str, before_id: int | None = None, limit: int = 20
) -> list[Order]:
    """The orders of a user `address` (any letter case), newest first (by id), at most
    `limit`, only those older than `before_id` when given: keyset pagination."""
    rows = Order.objects.alias(user=Lower("user_address")).filter(user=address.lower())
    if before_id is not None:
        rows = rows.filter(pk__lt=before_id)
    return list(rows.order_by("-pk")[:limit])


def orders_by_tx(*, tx_hash: str) -> list[Order]:
    """Orders whose chain event (deposit / redeem) or settlement is in transaction `tx_hash`
    (0x-prefixed, lower case as stored), newest first."""
    return list(
        Order.objects.filter(Q(chain_tx_hash=tx_hash) | Q(settlement_tx_hash=tx_hash)).order_by(
            "-pk"
        )[:100]
    )


def allocations_of(*, order_ids: list[int]) -> QuerySet[Allocation]:
    """What each order got in each cycle, with the cycle (its one price), oldest first."""
    return (
        Allocation.objects.filter(order_id__in=order_ids)
        .select_related("cycle")
        .order_by("order_id", "pk")
    )


@dataclass(frozen=True)
class NettingEstimate:
    """What one order would get from a cycle that fills it in full at one price, under
    Bronco's published fee schedule (NETTING_FEE_RATE, NETTING_FEE_FLAT_USDT): `token_units`
    (10^-18 share) bought or sold, `usdt_units` (USDT base units) its cost (deposit) or gross
    proceeds (redeem), `fee_units` Bronco's fee, and `refund_units` (deposit: USDT left over)
    or `payout_units` (redeem: proceeds less the fee)."""

    token_units: int
    usdt_units: int
    fee_units: int
    refund_units: int = 0
    payout_units: int = 0
    fee_rate: Decimal = Decimal(0)
    fee_flat_units: int = 0


def netting_estimate(
    *, order_type: str, amount_units: int, price: Decimal, ccy_per_usdt: Decimal
) -> NettingEstimate:
    """The allocation a lone order would get at `price` (market currency per share;
    `ccy_per_usdt` market currency per USDT): the netting arithmetic itself
    (orders.netting.allocation.allocate_cycle), run on one participant. `amount_units`: USDT
    base units (BUY) or token units (SELL). Pure: reads settings, writes nothing. Raises
    ValueError for a non-positive price or FX rate."""
    from orders.netting.allocation import Buyer, Pricing, Seller, allocate_cycle, buyer_demand
    from orders.netting.cycles import fee_schedule

    fees = fee_schedule()
    pricing = Pricing(price, ccy_per_usdt)
    if order_type == OrderType.BUY:
        buyer = Buyer(0, amount_units)
        demand = buyer_demand(buyer, pricing, fees)
        fill = allocate_cycle(
            buyers=[buyer],
            sellers=[],
            pricing=pricing,
            fees=fees,
            inventory_units=0,
            broker_units=demand,
        ).buyers[0]
        return NettingEstimate(
            token_units=fill.token_units,
            usdt_units=fill.cost_units,
            fee_units=fill.fee_units,
            refund_units=amount_units - fill.cost_units - fill.fee_units,
            fee_rate=fees.rate,
            fee_flat_units=fees.flat_units,
        )
    sold = allocate_cycle(
        buyers=[],
        sellers=[Seller(0, amount_units)],
        pricing=pricing,
        fees=fees,
        inventory_units=0,
        broker_units=-amount_units,
    ).sellers[0]
    return NettingEstimate(
        token_units=sold.token_units,
        usdt_units=sold.proceeds_units,
        fee_units=sold.fee_units,
        payout_units=sold.payout_units,
        fee_rate=fees.rate,
        fee_flat_units=fees.flat_units,
    )


def broker_fill_allocations(*, client_id: str) -> FillAllocations | None:
    """Who got the fill of the broker order tagged `client_id` (a netting cycle's): each
    allocation's order, side, token units and USDT units, with the cycle's FX. None until
    the cycle is allocated (or for a client id that is no cycle's). Read by the trading
    app's fill-correction cases (`TRADING_FILL_ALLOCATIONS`)."""
    cycle = Cycle.objects.filter(client_id=client_id, status=CycleStatus.ALLOCATED).first()
    if cycle is None:
        return None
    rows = (
        Allocation.objects.filter(cycle=cycle)
        .order_by("order_id")
        .values_list("order_id", "order_type", "token_units", "usdt_units")
    )
    return FillAllocations(
        ref=f"cycle {cycle.pk}",
        side="BUY" if cycle.broker_units > 0 else "SELL",
        ccy_per_usdt=cycle.ccy_per_usdt,
        allocations=tuple(
            AllocationShare(
                order_id=order_id, side=side, token_units=int(tokens), usdt_units=int(usdt)
            )
            for order_id, side, tokens, usdt in rows
        ),
    )
