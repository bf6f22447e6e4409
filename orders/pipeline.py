"""The order pipeline: validate -> place -> poll -> finalize -> settle.

Each stage is a service that loads fresh state, does its one step, and returns what should
run next (`Next`) rather than enqueuing it itself, so tasks stay thin doors and the stages can
be driven directly in tests. Every stage is safe to run twice or concurrently with itself:

- validate and poll only write through `orders.state` (conditional UPDATE on the version);
- place holds the order's row lock across "look the remark up at the broker, place if
  absent, save the broker id", so two placers serialise and the second finds the order
  already EXECUTING; a crash after the broker accepted is healed by the remark look-up;
- finalize moves EXECUTING -> SETTLING once (the loser of a race gets StaleOrderVersion);
- settle submits through `chain.services`, idempotent per deposit / redeem id, and the vault
  itself refuses a second settlement of an id.

Manual refunds (the refunds app) take units of a PENDING deposit before it trades: the order
records them in `manual_refund_usdt`, and every stage works with what remains
(`usdt_amount - manual_refund_usdt`: sizing, allocation, the settlement's refund). An order
refunded in full is closed like a cancel before trade (settled with nothing to mint or
refund). Settle waits while a manual refund of the order is still unpaid, since the vault
refunds a deposit only before it is settled, and waits for the vault's reserve before a
settlement that pays USDT; it records the settlement's refund as an automatic Refund.

Broker calls go only through `trading.services`; settlement only through `chain.services`.
"""

import logging
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chain.settlement import (
    DepositSettlement,
    RedeemSettlement,
    SettlementState,
    settlement_sender,
)
from core.alerts import alert_raise
from core.audit import audit_record
from core.metrics import observe_stage
from core.models import AuditLog
from core.money import usdt_to_units
from orders.allocation import Settlement, allocate_buy, allocate_sell
from orders.models import Order, OrderStatus, OrderType
from orders.state import order_record, order_transition
from refunds import selectors as refund_selectors
from refunds import services as refund_services
from trading import pricing
from trading import services as broker
from trading.broker import BrokerOrder, BrokerStatus
from trading.exceptions import (
    BrokerRejected,
    BrokerUnavailable,
    DepositTooSmall,
    MarketClosed,
    NoQuote,
    RateLimited,
)

logger = logging.getLogger(__name__)

S = OrderStatus

VALIDATE = "orders.tasks.order_validate"
PLACE = "orders.tasks.order_place"
POLL = "orders.tasks.order_poll"
SETTLE = "orders.tasks.order_settle"

_HISTORY_LOOKUP_AFTER = timezone.timedelta(hours=1)


@dataclass(frozen=True)
class Next:
    task: str
    countdown: float = 0.0


def _actor(stage: str) -> str:
    return f"task:orders.{stage}"


def _past_deadline(order: Order) -> bool:
    return order.deadline is not None and timezone.now() >= order.deadline


def _ccy_per_usdt(code: str) -> Decimal:
    return pricing.fx_rate(code)


_SETTLING_ACTIONS = ("order.finalized", "order.refused", "order.canceled_before_trade")


def _observe(order: Order, stage: str, *, since: tuple[str, ...]) -> None:
    """Stage latency: from the audit entry that opened the stage to now."""
    started = (
        AuditLog.objects.filter(order_id=order.pk, action__in=since)
        .order_by("-seq")
        .values_list("created_at", flat=True)
        .first()
    )
    if started is not None:
        observe_stage(stage, (timezone.now() - started).total_seconds())


def _kind(order: Order) -> str:
    return "deposit" if order.order_type == OrderType.BUY else "redeem"


def _available_usdt(order: Order) -> int:
    """What a deposit has to trade and settle: the deposit less manual refunds."""
    return int(order.usdt_amount) - int(order.manual_refund_usdt)


# --- settling without the broker ---------------------------------------------------------


def _return_everything(order: Order) -> Settlement:
    if order.order_type == OrderType.BUY:
        return allocate_buy(
            usdt_in=_available_usdt(order),
            filled_qty=Decimal(0),
            avg_price=None,
            fee=Decimal(0),
            ccy_per_usdt=Decimal(1),
        )
    return allocate_sell(
        tokens_in=order.token_amount,
        filled_qty=Decimal(0),
        avg_price=None,
        fee=Decimal(0),
        ccy_per_usdt=Decimal(1),
    )


def _settle_untraded(order: Order, *, outcome: str, reason: str, stage: str) -> Next:
    """PENDING -> SETTLING with everything returned to the user. Only called when no broker
    order exists for this client id (callers look the remark up first)."""
    s = _return_everything(order)
    order_transition(
        order=order,
        to_status=S.SETTLING,
        actor=_actor(stage),
        action="order.refused" if outcome == S.FAILED else "order.canceled_before_trade",
        outcome=outcome,
        last_error=reason,
        refund_usdt=s.refund_usdt,
        tokens_returned=s.tokens_returned,
    )
    logger.info(
        "order settles untraded",
        extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash, "reason": reason},
    )
    return Next(SETTLE)


# --- validate ----------------------------------------------------------------------------


def order_validate(*, order_id: int) -> Next | None:
    """Check the order, take a quote, lock the limit price and size it."""
    order = Order.objects.get(pk=order_id)
    if order.status != S.PENDING:
        return None
    if order.price is not None:  # validated already; carry on
        return Next(PLACE)
    if order.order_type == OrderType.BUY and _available_usdt(order) <= 0:
        return _settle_untraded(
            order, outcome=S.CANCELED, reason="refunded manually in full", stage="validate"
        )
    if order.cancel_requested_at is not None:
        return _settle_untraded(
            order, outcome=S.CANCELED, reason="cancelled by the user", stage="validate"
        )
    if not order.stock_code:
        return _settle_untraded(
            order,
            outcome=S.FAILED,
            reason=f"symbol {order.symbol!r} is not listed",
            stage="validate",
        )
    if order.order_type == OrderType.BUY and _available_usdt(order) < usdt_to_units(
        settings.ORDER_MIN_USDT
    ):
        return _settle_untraded(
            order,
            outcome=S.FAILED,
            reason=f"deposit below the minimum of {settings.ORDER_MIN_USDT} USDT",
            stage="validate",
        )
    if order.order_type == OrderType.SELL and order.token_amount <= 0:
        return _settle_untraded(
            order, outcome=S.FAILED, reason="nothing to redeem", stage="validate"
        )

    try:
        if order.order_type == OrderType.BUY:
            plan = broker.plan_buy(code=order.stock_code, usdt_units=_available_usdt(order))
        else:
            plan = broker.plan_sell(code=order.stock_code, token_units=order.token_amount)
    except DepositTooSmall as exc:
        return _settle_untraded(order, outcome=S.FAILED, reason=str(exc), stage="validate")
    except (NoQuote, MarketClosed, BrokerUnavailable, RateLimited) as exc:
        if _past_deadline(order):
            return _settle_untraded(
                order, outcome=S.FAILED, reason=f"{exc} until the deadline", stage="validate"
            )
        wait = getattr(exc, "retry_after", None) or settings.ORDER_RETRY_SECONDS
        return Next(VALIDATE, countdown=wait)
    qty, limit = plan.qty, plan.limit_price

    order_record(
        order=order,
        actor=_actor("validate"),
        action="order.validated",
        qty=qty,
        price=limit,
    )
    _observe(order, "validate", since=("order.created",))
    return Next(PLACE)


# --- place -------------------------------------------------------------------------------


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
                    return _settle_untraded(
                        order,
                        outcome=S.CANCELED,
                        reason="cancelled by the user",
                        stage="place",
                    )
                if _past_deadline(order):
                    return _settle_untraded(
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
            return _settle_untraded(
                order, outcome=S.FAILED, reason=f"broker rejected: {exc}", stage="place"
            )
        order_transition(
            order=order,
            to_status=S.EXECUTING,
            actor=_actor("place"),
            action="order.placed",
            futu_order_id=placed.broker_order_id,
        )
    _observe(order, "place", since=("order.validated",))
    logger.info(
        "order placed",
        extra={
            "order_id": order.pk,
            "tx_hash": order.chain_tx_hash,
            "futu_order_id": placed.broker_order_id,
        },
    )
    return Next(POLL, countdown=settings.ORDER_POLL_INTERVAL_SECONDS)


# --- poll --------------------------------------------------------------------------------


def order_poll(*, order_id: int) -> Next | None:
    """Query the broker; record new fills; finalize when the broker order is final; cancel it
    when the user asked or the deadline passed. Pushed updates go through here too."""
    order = Order.objects.get(pk=order_id)
    if order.status != S.EXECUTING:
        return None
    try:
        # By Futu's order id: one row from OpenD, not every order of the account.
        current = broker.broker_query_order(broker_order_id=order.futu_order_id)
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
            source=_actor("poll"),
            details={"order_id": order.pk, "futu_order_id": order.futu_order_id},
        )
        if alert.count == 1:
            audit_record(
                actor=_actor("poll"),
                action="order.broker_lost",
                order_id=order.pk,
                after={"futu_order_id": order.futu_order_id},
            )
        logger.error("broker does not know order", extra={"order_id": order.pk})
        return Next(POLL, countdown=settings.ORDER_RETRY_SECONDS)

    if current.filled_qty != order.filled_qty or current.avg_fill_price != order.avg_fill_price:
        order = order_record(
            order=order,
            actor=_actor("poll"),
            action="order.fill_seen",
            filled_qty=current.filled_qty,
            avg_fill_price=current.avg_fill_price,
        )
    if current.is_final:
        return order_finalize(order=order, broker_order=current)

    wants_cancel = order.cancel_requested_at is not None or _past_deadline(order)
    if wants_cancel and order.broker_cancel_sent_at is None:
        try:
            broker.broker_cancel_order(client_id=order.client_id)
        except (BrokerUnavailable, RateLimited) as exc:
            return Next(POLL, countdown=getattr(exc, "retry_after", settings.ORDER_RETRY_SECONDS))
        except BrokerRejected as exc:
            # Typically "already filled": the next poll sees the final state.
            logger.info("cancel refused by broker: %s", exc, extra={"order_id": order.pk})
        order_record(
            order=order,
            actor=_actor("poll"),
            action="order.broker_cancel_sent",
            broker_cancel_sent_at=timezone.now(),
        )
    return Next(POLL, countdown=settings.ORDER_POLL_INTERVAL_SECONDS)


def order_finalize(*, order: Order, broker_order: BrokerOrder) -> Next:
    """Allocate the final fill to the order and move it to SETTLING with its amounts."""
    filled = broker_order.filled_qty
    avg = broker_order.avg_fill_price
    fee = pricing.fee_for(order.stock_code, filled, avg) if filled > 0 else Decimal(0)
    rate = _ccy_per_usdt(order.stock_code)
    if order.order_type == OrderType.BUY:
        s = allocate_buy(
            usdt_in=_available_usdt(order),
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
        actor=_actor("finalize"),
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
    _observe(order, "execute", since=("order.placed",))
    return Next(SETTLE)


# --- settle ------------------------------------------------------------------------------


def order_settle(*, order_id: int) -> Next | None:
    """Send (once) and confirm the on-chain settlement; on confirmation the order takes its
    terminal outcome. A settlement that reverts for any reason but "already settled" is
    alerted and retried, never dropped. Before sending, waits (re-scheduled) while a manual
    refund of the order is unpaid, and while the vault's reserve does not cover the USDT the
    settlement pays (alerted)."""
    order = Order.objects.get(pk=order_id)
    if order.status != S.SETTLING:
        return None
    kind = _kind(order)
    usdt = order.refund_usdt if order.order_type == OrderType.BUY else order.payout_usdt
    tokens = order.tokens_minted if order.order_type == OrderType.BUY else order.tokens_returned
    if not order.settlement_tx_hash:
        if refund_selectors.order_refunds_in_flight(order_id=order.pk):
            return Next(SETTLE, countdown=settings.REFUND_CHECK_SECONDS)
        if not refund_services.reserve_covers(
            amount=usdt, order_id=order.pk, actor=_actor("settle")
        ):
            return Next(SETTLE, countdown=settings.RESERVE_WAIT_SECONDS)
        tx = settlement_sender().submit(
            DepositSettlement(
                deposit_id=int(order.onchain_id),
                mint_token_units=tokens,
                refund_usdt_units=usdt,
                order_id=order.pk,
            )
            if order.order_type == OrderType.BUY
            else RedeemSettlement(
                redeem_id=int(order.onchain_id),
                payout_usdt_units=usdt,
                return_token_units=tokens,
                order_id=order.pk,
            ),
            actor=_actor("settle"),
        )
        order = order_record(
            order=order,
            actor=_actor("settle"),
            action="order.settlement_sent",
            settlement_tx_hash=tx.tx_hash,
        )
    state = settlement_sender().check(
        kind=kind, vault_id=int(order.onchain_id), actor=_actor("settle")
    )
    if state == SettlementState.CONFIRMED:
        record = settlement_sender().settlement(kind=kind, vault_id=int(order.onchain_id))
        updates = {}
        if record is not None and record.tx_hash and record.tx_hash != order.settlement_tx_hash:
            updates["settlement_tx_hash"] = record.tx_hash
        with transaction.atomic():
            order_transition(
                order=order,
                to_status=order.outcome,
                actor=_actor("settle"),
                action="order.settled",
                **updates,
            )
            refund_services.refund_record_automatic(
                order=order, tx_hash=order.settlement_tx_hash, actor=_actor("settle")
            )
        _observe(order, "settle", since=_SETTLING_ACTIONS)
        _observe(order, "end_to_end", since=("order.created",))
        logger.info(
            "order settled",
            extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash, "outcome": order.outcome},
        )
        return None
    if state == SettlementState.REVERTED:
        # Not "already settled" (that counts as confirmed): alert, and try again once the
        # vault would accept it. Never dropped: the order stays SETTLING until it settles.
        logger.error("settlement reverted", extra={"order_id": order.pk})
        alert_raise(
            key=f"settlement_reverted:{kind}:{int(order.onchain_id)}",
            message=f"{kind} {int(order.onchain_id)} (order {order.pk}) settlement reverted; "
            "retrying",
            severity="critical",
            source=_actor("settle"),
            details={"order_id": order.pk, "tx_hash": order.settlement_tx_hash},
        )
        audit_record(
            actor=_actor("settle"),
            action="order.settlement_reverted",
            order_id=order.pk,
            after={"tx_hash": order.settlement_tx_hash},
        )
        settlement_sender().resubmit(
            kind=kind, vault_id=int(order.onchain_id), actor=_actor("settle")
        )
        return Next(SETTLE, countdown=settings.ORDER_RETRY_SECONDS)
    return Next(SETTLE, countdown=settings.ORDER_SETTLE_CHECK_SECONDS)
