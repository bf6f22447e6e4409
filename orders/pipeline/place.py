"""Place: one broker order per Bronco order, whatever crashes (the remark is looked up under
the order's row lock)."""

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

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
    RateLimited,
)

logger = logging.getLogger(__name__)

_HISTORY_LOOKUP_AFTER = timezone.timedelta(hours=1)


def order_place(*, order_id: int) -> Next | None:
    """Place the broker order once. Holds the order's row lock from the remark look-up to
    saving the broker id, so concurrent placers serialise; the look-up makes a retry after a
    crash adopt the order the broker already has instead of placing a second one."""
    with transaction.atomic():
        order = Order.objects.select_for_update(of=("self",)).get(pk=order_id)
        if order.status != S.PENDING:
            return None
        if order.price is None:
            return Next(VALIDATE)
        try:
            # Today's orders suffice for an order created within the hour; an older one may
            # have reached the broker on an earlier trading day.
            placed = broker.broker_query_order(
                client_id=order.client_id,
                include_history=order.created_at < timezone.now() - _HISTORY_LOOKUP_AFTER,
            )
            if placed is None:
                if order.cancel_requested_at is not None:
                    return settle_untraded(
                        order,
                        outcome=S.CANCELED,
                        reason="cancelled by the user",
                        stage="place",
                    )
                if past_deadline(order):
                    return settle_untraded(
                        order,
                        outcome=S.FAILED,
                        reason="could not reach the broker before the deadline",
                        stage="place",
                    )
                placed = broker.broker_place_order(
                    client_id=order.client_id,
                    code=order.stock_code,
                    side=order.order_type,
                    qty=order.qty,
                    limit_price=order.price,
                )
        except RateLimited as exc:
            return Next(PLACE, countdown=max(exc.retry_after, 0.05))
        except BrokerUnavailable:
            return Next(PLACE, countdown=settings.ORDER_RETRY_SECONDS)
        except BrokerRejected as exc:
            return settle_untraded(
                order, outcome=S.FAILED, reason=f"broker rejected: {exc}", stage="place"
            )
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
