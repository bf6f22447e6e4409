"""Reads of the order lifecycle that other apps make (refunds, ops). Other apps reach orders
only here and through `orders.services` (`make lint` enforces it for refunds); the status
and type vocabularies are part of what they read, so they are named here too.
"""

from django.db.models import Case, F, Sum, When

from orders.models import OPEN_STATUSES, TERMINAL_STATUSES, Order, OrderStatus, OrderType

__all__ = [
    "OPEN_STATUSES",
    "TERMINAL_STATUSES",
    "Order",
    "OrderStatus",
    "OrderType",
    "order_get",
    "order_lock",
    "order_usdt_remaining",
    "settling_usdt_owed",
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
