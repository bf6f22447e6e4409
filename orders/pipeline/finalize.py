"""Finalize: allocate the final fill and move the order to SETTLING with its amounts."""

import logging
from decimal import Decimal

from orders.allocation import allocate_buy, allocate_sell
from orders.models import Order, OrderType
from orders.pipeline.common import (
    SETTLE,
    Next,
    S,
    available_usdt,
    ccy_per_usdt,
    observe_since,
    stage_actor,
)
from orders.state import order_transition
from trading import pricing
from trading.broker import BrokerOrder, BrokerStatus

logger = logging.getLogger(__name__)


def order_finalize(*, order: Order, broker_order: BrokerOrder) -> Next:
    """Allocate the final fill to the order and move it to SETTLING with its amounts."""
    filled = broker_order.filled_qty
    avg = broker_order.avg_fill_price
    fee = pricing.fee_for(order.stock_code, filled, avg) if filled > 0 else Decimal(0)
    rate = ccy_per_usdt(order.stock_code)
    if order.order_type == OrderType.BUY:
        s = allocate_buy(
            usdt_in=available_usdt(order),
            filled_qty=filled,
            avg_price=avg,
            fee=fee,
            ccy_per_usdt=rate,
        )
    else:
        s = allocate_sell(
            tokens_in=order.token_amount,
            filled_qty=filled,
            avg_price=avg,
            fee=fee,
            ccy_per_usdt=rate,
        )
    if filled > 0:
        outcome = S.EXECUTED
    elif broker_order.status == BrokerStatus.FAILED:
        outcome = S.FAILED
    else:
        outcome = S.CANCELED
    order_transition(
        order=order,
        to_status=S.SETTLING,
        actor=stage_actor("finalize"),
        action="order.finalized",
        outcome=outcome,
        filled_qty=filled,
        avg_fill_price=avg,
        cost_usdt=s.cost_usdt,
        fees_usdt=s.fees_usdt,
        refund_usdt=s.refund_usdt,
        payout_usdt=s.payout_usdt,
        tokens_minted=s.tokens_minted,
        tokens_returned=s.tokens_returned,
        last_error=broker_order.last_error,
    )
    if s.capped:
        logger.error("charge capped at the deposit", extra={"order_id": order.pk})
    observe_since(order, "execute", since=("order.placed",))
    return Next(SETTLE)
