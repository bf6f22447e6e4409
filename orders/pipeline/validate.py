"""Validate: check the order and put it in its symbol's book, where netting cycles take it
(`orders.netting.cycles`). No broker request: pricing happens once per cycle, for everyone."""

import logging

from django.conf import settings
from django.utils import timezone

from core.money import usdt_to_units
from orders.models import Order, OrderType
from orders.pipeline.common import (
    Next,
    S,
    available_usdt,
    observe_since,
    settle_untraded,
    stage_actor,
)
from orders.state import order_record

logger = logging.getLogger(__name__)


def order_validate(*, order_id: int) -> Next | None:
    """Refuse what cannot trade (settled untraded, everything returned) or book the order.
    Returns SETTLE for a refusal and None once booked (the book's cycles take it from
    there). Safe to run twice: a booked or moved-on order is left alone."""
    order = Order.objects.get(pk=order_id)
    if order.status != S.PENDING or order.booked_at is not None:
        return None
    if order.order_type == OrderType.BUY and available_usdt(order) <= 0:
        return settle_untraded(
            order, outcome=S.CANCELED, reason="refunded manually in full", stage="validate"
        )
    if order.cancel_requested_at is not None:
        return settle_untraded(
            order, outcome=S.CANCELED, reason="cancelled by the user", stage="validate"
        )
    if not order.stock_code:
        return settle_untraded(
            order,
            outcome=S.FAILED,
            reason=f"symbol {order.symbol!r} is not listed",
            stage="validate",
        )
    if order.order_type == OrderType.BUY and available_usdt(order) < usdt_to_units(
        settings.ORDER_MIN_USDT
    ):
        return settle_untraded(
            order,
            outcome=S.FAILED,
            reason=f"deposit below the minimum of {settings.ORDER_MIN_USDT} USDT",
            stage="validate",
        )
    if order.order_type == OrderType.SELL and order.token_amount <= 0:
        return settle_untraded(
            order, outcome=S.FAILED, reason="nothing to redeem", stage="validate"
        )
    order_record(
        order=order,
        actor=stage_actor("validate"),
        action="order.booked",
        booked_at=timezone.now(),
    )
    observe_since(order, "validate", since=("order.created",))
    return None
