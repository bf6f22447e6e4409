"""A manual refund's checks and effects on its order: may this deposit be refunded now, and
holding or releasing the refunded units on the order. The order is read and changed only
through `orders.selectors` and `orders.services` (its row lock, its state machine)."""

from __future__ import annotations

import logging

from core.alerts import alert_raise
from core.models import AlertSeverity
from orders.selectors import Order, OrderStatus, OrderType, order_usdt_remaining
from orders.selectors import order_lock as _order_lock_row
from orders.services import order_manual_refund_hold, order_manual_refund_release
from refunds.exceptions import RefundRefused
from refunds.models import Refund
from refunds.services.records import usdt_text

logger = logging.getLogger(__name__)

# --- the order side ----------------------------------------------------------------------


def order_lock(order_id: int) -> Order:
    order = _order_lock_row(order_id=order_id)
    if order is None:
        raise RefundRefused(
            f"no order {order_id}: check the id (orders are listed in the admin under Orders)"
        )
    return order


class RefusedForNow(RefundRefused):
    """Refused for now (the order is in a netting cycle); trying again later may succeed."""


def order_refusal(order: Order) -> None:
    """Raise RefundRefused unless this deposit waits in the book (PENDING: not in a cycle,
    not settling). Call with the order's row lock held."""
    if order.order_type != OrderType.BUY:
        raise RefundRefused(
            f"order {order.pk} is a redeem (SELL), not a deposit: its USDT proceeds are paid by "
            "its settlement; only deposits are refunded manually"
        )
    if order.is_terminal or order.status == OrderStatus.SETTLING:
        settled = "settled" if order.is_terminal else "settling on chain"
        raise RefundRefused(
            f"order {order.pk} is already refunded/settled: {order.status} ({settled}; "
            f"settlement refund {usdt_text(order.refund_usdt)}, manual refunds "
            f"{usdt_text(order.manual_refund_usdt)}); nothing remains to refund here - if the user "
            "is still owed money, check the order's settlement transaction"
        )
    if order.status == OrderStatus.EXECUTING:
        raise RefusedForNow(
            f"order {order.pk} takes part in netting cycle {order.cycle_id or '?'} now "
            "(EXECUTING, its cycle's broker order is working): wait a few seconds for the "
            "cycle to end and ask again, or cancel the order; its settlement refunds whatever "
            "is not filled"
        )


def order_remaining(order: Order) -> int:
    """What a manual refund may still take from a deposit waiting in the book
    (`orders.selectors.order_usdt_remaining`: the deposit less manual refunds, less what its
    cycles spent and charged so far), in USDT base units."""
    return order_usdt_remaining(order)


def amount_check(order: Order, amount: int) -> None:
    remaining = order_remaining(order)
    if remaining <= 0:
        raise RefundRefused(
            f"order {order.pk} is already refunded in full manually "
            f"({usdt_text(order.manual_refund_usdt)}); nothing remains"
        )
    if amount > remaining:
        raise RefundRefused(
            f"amount {usdt_text(amount)} is above what remains of order {order.pk}: "
            f"{usdt_text(remaining)} (deposit {usdt_text(order.usdt_amount)} less "
            f"{usdt_text(order.manual_refund_usdt)} refunded manually); ask for at most that"
        )


def order_hold(order: Order, refund: Refund, *, actor: str) -> None:
    """Record the refund on its (locked, PENDING) order: the pipeline then sizes, trades and
    settles only what remains, and closes the order when nothing does."""
    order_manual_refund_hold(order=order, amount=int(refund.amount), actor=actor)


def order_release(refund: Refund, *, actor: str) -> None:
    """A failed manual refund's amount goes back to its order; when the order can no longer
    take it back, a critical alert says who must be paid by hand."""
    order = order_manual_refund_release(
        order_id=refund.order_id, amount=int(refund.amount), actor=actor
    )
    if order is None:
        return
    alert_raise(
        key=f"refund_unreleased_{refund.pk}",
        severity=AlertSeverity.CRITICAL,
        source="refunds",
        message=(
            f"refund {refund.pk} of order {order.pk} failed after the order's "
            f"settlement was sent: {usdt_text(refund.amount)} must be paid to "
            f"{order.user_address} by hand"
        ),
        details={"refund_id": refund.pk, "order_id": order.pk, "amount": refund.amount},
    )
