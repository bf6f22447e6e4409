"""Reads of the order lifecycle that other apps make (refunds, ops). Other apps reach orders
only here and through `orders.services` (`make lint` enforces it for refunds); the status
and type vocabularies are part of what they read, so they are named here too.
"""

from django.db.models import Case, F, Sum, When

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
    "settling_usdt_owed",
]


def order_get(*, order_id: int) -> Order | None:
    return Order.objects.filter(pk=order_id).first()


def order_lock(*, order_id: int) -> Order | None:
    """The order with its row locked until the caller's transaction ends (call inside
    `transaction.atomic()`), or None. Orders are always locked before refunds, and one
    order at a time, so lock order is the same everywhere."""
    return Order.objects.select_for_update(of=("self",)).filter(pk=order_id).first()


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
