"""What every pipeline stage shares: the stage names, `Next`, and the helpers that settle an
order without the broker."""

import logging
from collections.abc import Sequence
from decimal import Decimal

from django.db.models import Max
from django.utils import timezone

from core.metrics import observe_stage, observe_stage_many
from core.models import AuditLog
from orders.models import Order, OrderStatus, OrderType
from orders.stages import Next, Stage
from orders.state import order_transition
from trading import pricing

logger = logging.getLogger(__name__)

S = OrderStatus


VALIDATE, SETTLE = Stage.VALIDATE, Stage.SETTLE


def stage_actor(stage: str) -> str:
    return f"task:orders.{stage}"


def past_deadline(order: Order) -> bool:
    return order.deadline is not None and timezone.now() >= order.deadline


def ccy_per_usdt(code: str) -> Decimal:
    return pricing.fx_rate(code)


SETTLING_ACTIONS = ("order.finalized", "order.refused", "order.canceled_before_trade")


def observe_since(order: Order, stage: str, *, since: tuple[str, ...]) -> None:
    """Stage latency: from the audit entry that opened the stage to now."""
    started = (
        AuditLog.objects.filter(order_id=order.pk, action__in=since)
        .order_by("-seq")
        .values_list("created_at", flat=True)
        .first()
    )
    if started is not None:
        observe_stage(stage, (timezone.now() - started).total_seconds())


def observe_since_many(order_ids: Sequence[int], stage: str, *, since: tuple[str, ...]) -> None:
    """`observe_since` for many orders settled together: one query for the audit entries
    that opened the stage (the latest per order), one observation per order."""
    if not order_ids:
        return
    now = timezone.now()
    started = (
        AuditLog.objects.filter(order_id__in=list(order_ids), action__in=since)
        .values("order_id")
        .annotate(at=Max("created_at"))
        .values_list("at", flat=True)
    )
    observe_stage_many(stage, [(now - at).total_seconds() for at in started])


def settlement_kind(order: Order) -> str:
    return "deposit" if order.order_type == OrderType.BUY else "redeem"


def available_usdt(order: Order) -> int:
    """What a deposit has to trade and settle: the deposit less manual refunds."""
    return int(order.usdt_amount) - int(order.manual_refund_usdt)


def settle_untraded(order: Order, *, outcome: str, reason: str, stage: str) -> Next:
    """PENDING -> SETTLING with everything returned to the user (the deposit less manual
    refunds, or every token of a redeem). Only for an order that never joined a cycle."""
    buy = order.order_type == OrderType.BUY
    order_transition(
        order=order,
        to_status=S.SETTLING,
        actor=stage_actor(stage),
        action="order.refused" if outcome == S.FAILED else "order.canceled_before_trade",
        outcome=outcome,
        last_error=reason,
        refund_usdt=available_usdt(order) if buy else 0,
        tokens_returned=0 if buy else int(order.token_amount),
    )
    logger.info(
        "order settles untraded",
        extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash, "reason": reason},
    )
    return Next(SETTLE)
