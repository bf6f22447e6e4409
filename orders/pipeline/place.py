"""Place: one broker order per Bronco order, whatever crashes.

`trading.services.broker_order_submit` records the attempt before calling Futu and, on a
retry, looks the client id up in the open list *and* in Futu's history (where an order that
filled or failed at once is, and only there). No order row lock is held across the broker
call: the attempt must be committed before Futu is called, and the trading record
serialises concurrent placers; the transition to EXECUTING is a conditional update."""

import logging

from django.conf import settings
from django.db import transaction

from orders.models import Order
from orders.pipeline.common import (
    PLACE,
    POLL,
    VALIDATE,
    Next,
    S,
    observe_since,
    past_deadline,
    settle_untraded,
    stage_actor,
)
from orders.state import order_transition
from trading import services as broker
from trading.exceptions import (
    BrokerRejected,
    BrokerUnavailable,
    InsufficientBuyingPower,
    PlacementInFlight,
    RateLimited,
)

logger = logging.getLogger(__name__)


def _settle_untraded(order_id: int, *, outcome: str, reason: str) -> Next | None:
    with transaction.atomic():
        order = Order.objects.select_for_update(of=("self",)).get(pk=order_id)
        if order.status != S.PENDING:
            return None
        return settle_untraded(order, outcome=outcome, reason=reason, stage="place")


def order_place(*, order_id: int) -> Next | None:
    """Place the broker order once (see the module docstring); move the order to EXECUTING
    with Futu's id. A cancel or deadline before any order reached the broker closes the
    client id at the trading side first, so no later retry can place it."""
    order = Order.objects.get(pk=order_id)
    if order.status != S.PENDING:
        return None
    if order.price is None:
        return Next(VALIDATE)
    try:
        if order.cancel_requested_at is not None or past_deadline(order):
            placed = broker.broker_order_abandon(client_id=order.client_id)
            if placed is None:
                if order.cancel_requested_at is not None:
                    return _settle_untraded(
                        order_id, outcome=S.CANCELED, reason="cancelled by the user"
                    )
                return _settle_untraded(
                    order_id,
                    outcome=S.FAILED,
                    reason="could not reach the broker before the deadline",
                )
        else:
            placed = broker.broker_order_submit(
                client_id=order.client_id,
                code=order.stock_code,
                side=order.order_type,
                qty=order.qty,
                limit_price=order.price,
            )
    except (RateLimited, PlacementInFlight) as exc:
        return Next(PLACE, countdown=max(exc.retry_after, 0.05))
    except InsufficientBuyingPower as exc:
        # Not the user's fault and not final: wait (trading opened an operator alert).
        logger.warning("order waits for buying power: %s", exc, extra={"order_id": order_id})
        return Next(PLACE, countdown=exc.retry_after)
    except BrokerUnavailable:
        return Next(PLACE, countdown=settings.ORDER_RETRY_SECONDS)
    except BrokerRejected as exc:
        return _settle_untraded(order_id, outcome=S.FAILED, reason=f"broker rejected: {exc}")
    with transaction.atomic():
        order = Order.objects.select_for_update(of=("self",)).get(pk=order_id)
        if order.status != S.PENDING:
            return None
        order_transition(
            order=order,
            to_status=S.EXECUTING,
            actor=stage_actor("place"),
            action="order.placed",
            futu_order_id=placed.broker_order_id,
        )
    observe_since(order, "place", since=("order.validated",))
    logger.info(
        "order placed",
        extra={
            "order_id": order.pk,
            "tx_hash": order.chain_tx_hash,
            "futu_order_id": placed.broker_order_id,
        },
    )
    return Next(POLL, countdown=settings.ORDER_POLL_INTERVAL_SECONDS)
