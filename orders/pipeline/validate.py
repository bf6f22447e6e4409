"""Validate: check the order, take a quote, lock the limit price and size it."""

import logging

from django.conf import settings

from core.money import usdt_to_units
from orders.models import Order, OrderType
from orders.pipeline.common import (
    PLACE,
    VALIDATE,
    Next,
    S,
    available_usdt,
    observe_since,
    past_deadline,
    settle_untraded,
    stage_actor,
)
from orders.state import order_record
from trading import services as broker
from trading.exceptions import (
    BrokerUnavailable,
    DepositTooSmall,
    MarketClosed,
    NoQuote,
    RateLimited,
)

logger = logging.getLogger(__name__)


def order_validate(*, order_id: int) -> Next | None:
    """Check the order, take a quote, lock the limit price and size it."""
    order = Order.objects.get(pk=order_id)
    if order.status != S.PENDING:
        return None
    if order.price is not None:  # validated already; carry on
        return Next(PLACE)
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

    try:
        if order.order_type == OrderType.BUY:
            plan = broker.plan_buy(code=order.stock_code, usdt_units=available_usdt(order))
        else:
            plan = broker.plan_sell(code=order.stock_code, token_units=order.token_amount)
    except DepositTooSmall as exc:
        return settle_untraded(order, outcome=S.FAILED, reason=str(exc), stage="validate")
    except (NoQuote, MarketClosed, BrokerUnavailable, RateLimited) as exc:
        if past_deadline(order):
            return settle_untraded(
                order, outcome=S.FAILED, reason=f"{exc} until the deadline", stage="validate"
            )
        wait = getattr(exc, "retry_after", None) or settings.ORDER_RETRY_SECONDS
        return Next(VALIDATE, countdown=wait)
    qty, limit = plan.qty, plan.limit_price

    order_record(
        order=order,
        actor=stage_actor("validate"),
        action="order.validated",
        qty=qty,
        price=limit,
    )
    observe_since(order, "validate", since=("order.created",))
    return Next(PLACE)
