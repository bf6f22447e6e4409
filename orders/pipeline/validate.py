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


def validation_refusal(order: Order) -> tuple[str, str] | None:
    """Why `order` cannot trade, as (outcome, reason), or None when it may be booked. Pure
    (reads the order's fields only): the listener's bulk booking
    (`orders.services.orders_create_from_chain`) and the validate stage share it."""
    if order.order_type == OrderType.BUY and available_usdt(order) <= 0:
        return S.CANCELED, "refunded manually in full"
    if order.cancel_requested_at is not None:
        return S.CANCELED, "cancelled by the user"
    if not order.stock_code:
        return S.FAILED, f"symbol {order.symbol!r} is not listed"
    if order.order_type == OrderType.BUY and available_usdt(order) < usdt_to_units(
        settings.ORDER_MIN_USDT
    ):
        return S.FAILED, f"deposit below the minimum of {settings.ORDER_MIN_USDT} USDT"
    if order.order_type == OrderType.SELL and order.token_amount <= 0:
        return S.FAILED, "nothing to redeem"
    return None


def order_validate(*, order_id: int) -> Next | None:
    """Refuse what cannot trade (settled untraded, everything returned) or book the order.
    Returns SETTLE for a refusal and None once booked (the book's cycles take it from
    there). Safe to run twice: a booked or moved-on order is left alone."""
    order = Order.objects.get(pk=order_id)
    if order.status != S.PENDING or order.booked_at is not None:
        return None
    refusal = validation_refusal(order)
    if refusal is not None:
        outcome, reason = refusal
        return settle_untraded(order, outcome=outcome, reason=reason, stage="validate")
    order_record(
        order=order,
        actor=stage_actor("validate"),
        action="order.booked",
        booked_at=timezone.now(),
    )
    observe_since(order, "validate", since=("order.created",))
    return None
