"""Poll: follow the broker order (fills from its deals); cancel it, again until it takes,
when the user asked or the deadline passed. Never finalizes while the broker still has the
order working."""

import logging

from django.conf import settings
from django.utils import timezone

from core.alerts import alert_raise
from core.audit import audit_record
from orders.models import Order
from orders.pipeline.common import (
    POLL,
    Next,
    S,
    past_deadline,
    stage_actor,
)
from orders.pipeline.finalize import order_finalize
from orders.state import order_record
from trading import services as broker
from trading.exceptions import BrokerUnavailable, RateLimited

logger = logging.getLogger(__name__)


def order_poll(*, order_id: int) -> Next | None:
    """Sync the broker order by client id; record new fills; finalize once the broker says
    the order is final (never while it is working, cancelling or disabled); cancel when
    asked or past the deadline, re-sending a cancel that did not take (trading throttles
    and alerts). Pushed updates go through here too."""
    order = Order.objects.get(pk=order_id)
    if order.status != S.EXECUTING:
        return None
    wants_cancel = order.cancel_requested_at is not None or past_deadline(order)
    try:
        if wants_cancel:
            current = broker.broker_order_cancel(client_id=order.client_id)
        else:
            current = broker.broker_order_sync(client_id=order.client_id)
    except (BrokerUnavailable, RateLimited) as exc:
        return Next(POLL, countdown=getattr(exc, "retry_after", settings.ORDER_RETRY_SECONDS))
    if current is None:
        # The broker does not know an order it accepted: an operator must look. One open
        # alert (and one audit entry) however often the poll comes back to it.
        alert = alert_raise(
            key=f"broker_lost:{order.pk}",
            message=f"order {order.pk}: the broker does not know Futu order "
            f"{order.futu_order_id}; still polling",
            severity="critical",
            source=stage_actor("poll"),
            details={"order_id": order.pk, "futu_order_id": order.futu_order_id},
        )
        if alert.count == 1:
            audit_record(
                actor=stage_actor("poll"),
                action="order.broker_lost",
                order_id=order.pk,
                after={"futu_order_id": order.futu_order_id},
            )
        logger.error("broker does not know order", extra={"order_id": order.pk})
        return Next(POLL, countdown=settings.ORDER_RETRY_SECONDS)

    if current.filled_qty != order.filled_qty or current.avg_fill_price != order.avg_fill_price:
        order = order_record(
            order=order,
            actor=stage_actor("poll"),
            action="order.fill_seen",
            filled_qty=current.filled_qty,
            avg_fill_price=current.avg_fill_price,
        )
    if wants_cancel and order.broker_cancel_sent_at is None:
        order_record(
            order=order,
            actor=stage_actor("poll"),
            action="order.broker_cancel_sent",
            broker_cancel_sent_at=timezone.now(),
        )
        # The cancel's own push takes the run over at once (orders.runs); finalizing here
        # too would race it. The next poll (this run's or the push's) finalizes.
        return Next(POLL, countdown=settings.ORDER_POLL_INTERVAL_SECONDS)
    if current.is_final:
        return order_finalize(order=order, broker_order=current.order)
    return Next(POLL, countdown=settings.ORDER_POLL_INTERVAL_SECONDS)
