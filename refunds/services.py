"""Refund writes: manual refunds (request, approve, pay, confirm), the record of the
pipeline's automatic refunds, and the reserve check before USDT leaves the vault.

How a manual refund moves its money, and why it cannot pay twice or lose a unit:
- It is allowed only while its deposit order is PENDING and unknown to the broker, so nothing
  of the deposit has been spent. The check and the hold run under the order's row lock (the
  lock the place stage holds from its broker look-up to saving the broker id).
- Once approved (at once below REFUND_APPROVAL_THRESHOLD_USDT, else by a second, different
  operator), the amount is held on the order (`Order.manual_refund_usdt`, through
  `orders.state`) and the pipeline trades and settles only what remains.
- It is paid with the vault's refundDeposit through the chain sender (kind "refund", keyed by
  the refund's on-chain id): at most one transaction record per refund, and the vault
  refuses a refund id twice (RefundIdUsed is recognised as paid by an earlier attempt).
- The order's settlement waits while a manual refund of it is in flight (the vault refunds a
  deposit only before it is settled); a refund that fails hands its amount back to the
  order's settlement.
- Before paying, the vault's USDT balance less RESERVE_FLOOR_USDT must cover the amount; if
  not, the refund waits (WAITING_RESERVE, alert `reserve_short`) and a beat task retries it.

Every status change is a conditional UPDATE under the refund's row lock and writes an audit
entry naming its actor, in the same transaction.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from chain import selectors as chain_selectors
from chain import services as chain_services
from chain.exceptions import ChainUnavailable, SettlementRejected
from chain.models import SettlementKind
from chain.services import SettlementState
from orders.alerts import alert_raise, alert_resolve
from orders.audit import audit_record
from orders.metrics import count_refund_failure
from orders.models import AlertSeverity, Order, OrderStatus, OrderType
from orders.money import units_to_usdt
from orders.state import order_record
from refunds.exceptions import RefundRefused
from refunds.models import Refund, RefundOrigin, RefundStatus
from refunds.selectors import (
    approval_threshold_units,
    committed_units,
    reserve_available,
)
from trading import services as broker
from trading.exceptions import BrokerUnavailable, RateLimited

logger = logging.getLogger(__name__)

S = RefundStatus
VALIDATE_TASK = "orders.tasks.order_validate"
CHECK_TASK = "refunds.tasks.refund_check"
RESERVE_SHORT = "reserve_short"
RESERVE_SHORT_SETTLEMENT = "reserve_short_settlement"
_CHANNEL_PREFIXES = ("admin:", "cli:", "operator:")


def _identity(operator: str) -> str:
    """One person across channels: "admin:Alice", "cli:alice" and "alice" are the same."""
    name = operator.strip().lower()
    for prefix in _CHANNEL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :].strip()
    return name


def _usdt(units: int) -> str:
    return f"{units_to_usdt(units)} USDT"


def _view(refund: Refund) -> dict[str, Any]:
    return {
        "refund_id": refund.pk,
        "onchain_id": int(refund.onchain_id),
        "amount": int(refund.amount),
        "origin": refund.origin,
        "status": refund.status,
        "requested_by": refund.requested_by,
        "approved_by": refund.approved_by,
        "tx_hash": refund.tx_hash,
    }


def _move(
    refund: Refund,
    *,
    from_statuses: tuple[str, ...],
    to_status: str,
    actor: str,
    action: str,
    **changes: Any,
) -> bool:
    """Conditional UPDATE of the refund's status with its audit entry; False when the refund
    is no longer in one of `from_statuses` (someone else moved it first)."""
    before = _view(refund)
    with transaction.atomic():
        updated = Refund.objects.filter(pk=refund.pk, status__in=from_statuses).update(
            status=to_status, updated_at=timezone.now(), **changes
        )
        if not updated:
            return False
        refund.status = to_status
        for key, value in changes.items():
            setattr(refund, key, value)
        audit_record(
            actor=actor, action=action, order_id=refund.order_id, before=before, after=_view(refund)
        )
    return True


def _enqueue(task: str, *args: Any, countdown: float | None = None) -> None:
    transaction.on_commit(
        lambda: current_app.send_task(task, args=list(args), countdown=countdown), robust=True
    )


# --- the order side ----------------------------------------------------------------------


def _locked_order(order_id: int) -> Order:
    order = Order.objects.select_for_update(of=("self",)).filter(pk=order_id).first()
    if order is None:
        raise RefundRefused(
            f"no order {order_id}: check the id (orders are listed in the admin under Orders)"
        )
    return order


class _Transient(RefundRefused):
    """Refused for now (the broker could not be asked); trying again later may succeed."""


def _refusal(order: Order) -> None:
    """Raise RefundRefused unless nothing of this deposit is spent or working at the broker.
    Call with the order's row lock held."""
    if order.order_type != OrderType.BUY:
        raise RefundRefused(
            f"order {order.pk} is a redeem (SELL), not a deposit: its USDT proceeds are paid by "
            "its settlement; only deposits are refunded manually"
        )
    if order.is_terminal or order.status == OrderStatus.SETTLING:
        settled = "settled" if order.is_terminal else "settling on chain"
        raise RefundRefused(
            f"order {order.pk} is already refunded/settled: {order.status} ({settled}; "
            f"settlement refund {_usdt(order.refund_usdt)}, manual refunds "
            f"{_usdt(order.manual_refund_usdt)}); nothing remains to refund here - if the user "
            "is still owed money, check the order's settlement transaction"
        )
    if order.status == OrderStatus.EXECUTING:
        raise RefundRefused(
            f"order {order.pk} is still working at the broker (EXECUTING, Futu order "
            f"{order.futu_order_id or '?'}): wait for it to finish or cancel it; its settlement "
            "refunds whatever is not filled"
        )
    try:
        placed = broker.broker_query_order(client_id=order.client_id)
    except (BrokerUnavailable, RateLimited) as exc:
        raise _Transient(
            f"order {order.pk}: cannot tell whether the broker has it ({exc}); try again when "
            "the broker answers"
        ) from exc
    if placed is not None:
        raise RefundRefused(
            f"order {order.pk} is still working at the broker (Futu order "
            f"{placed.broker_order_id}, {placed.status}): the pipeline is taking it over; wait "
            "for its settlement, which refunds whatever is not filled"
        )


def _remaining(order: Order) -> int:
    """What a manual refund may still take: nothing of a PENDING deposit is spent yet."""
    return int(order.usdt_amount) - int(order.manual_refund_usdt)


def _check_amount(order: Order, amount: int) -> None:
    remaining = _remaining(order)
    if remaining <= 0:
        raise RefundRefused(
            f"order {order.pk} is already refunded in full manually "
            f"({_usdt(order.manual_refund_usdt)}); nothing remains"
        )
    if amount > remaining:
        raise RefundRefused(
            f"amount {_usdt(amount)} is above what remains of order {order.pk}: "
            f"{_usdt(remaining)} (deposit {_usdt(order.usdt_amount)} less "
            f"{_usdt(order.manual_refund_usdt)} refunded manually); ask for at most that"
        )


def _hold_on_order(order: Order, refund: Refund, *, actor: str) -> None:
    """Record the refund on its (locked, PENDING) order: the pipeline then sizes, trades and
    settles only what remains, and closes the order when nothing does (validate re-runs)."""
    order_record(
        order=order,
        actor=actor,
        action="order.manual_refund",
        manual_refund_usdt=int(order.manual_refund_usdt) + int(refund.amount),
        qty=None,
        price=None,
    )
    _enqueue(VALIDATE_TASK, order.pk)


def _release_from_order(refund: Refund, *, actor: str) -> None:
    """A failed manual refund's amount goes back to its order: to be traded (PENDING) or
    refunded by the settlement (SETTLING, not yet sent)."""
    with transaction.atomic():
        order = Order.objects.select_for_update(of=("self",)).get(pk=refund.order_id)
        if order.is_terminal or order.settlement_tx_hash:
            alert_raise(
                key=f"refund_unreleased_{refund.pk}",
                severity=AlertSeverity.CRITICAL,
                source="refunds",
                message=(
                    f"refund {refund.pk} of order {order.pk} failed after the order's settlement "
                    f"was sent: {_usdt(refund.amount)} must be paid to {order.user_address} by hand"
                ),
                details={"refund_id": refund.pk, "order_id": order.pk, "amount": refund.amount},
            )
            return
        changes: dict[str, int] = {
            "manual_refund_usdt": int(order.manual_refund_usdt) - int(refund.amount)
        }
        if order.status == OrderStatus.SETTLING:
            changes["refund_usdt"] = int(order.refund_usdt) + int(refund.amount)
        order_record(order=order, actor=actor, action="order.manual_refund_released", **changes)


# --- manual refunds ----------------------------------------------------------------------


def refund_request(
    *, order_id: int, reason: str, requested_by: str, amount: int | None = None
) -> Refund:
    """Ask for a manual refund of `amount` USDT base units of a deposit (None: all that
    remains). Refuses with RefundRefused (nothing changed) an unknown order, a redeem, an
    order already settled or settling, one working at the broker, an amount that is not
    positive or above what remains. Above REFUND_APPROVAL_THRESHOLD_USDT the refund waits for
    a second operator (AWAITING_APPROVAL); otherwise it is approved and paid at once (or waits
    for the reserve)."""
    if not requested_by.strip():
        raise RefundRefused("name the operator asking for the refund (--operator NAME)")
    if not reason.strip():
        raise RefundRefused('give the reason for the refund (--reason "...")')
    if amount is not None and amount <= 0:
        raise RefundRefused(f"the amount must be positive, not {amount} base units")
    with transaction.atomic():
        order = _locked_order(order_id)
        _refusal(order)
        amount = _remaining(order) if amount is None else amount
        _check_amount(order, amount)
        needs_approval = amount > approval_threshold_units()
        refund = Refund.objects.create(
            order=order,
            amount=amount,
            reason=reason.strip(),
            origin=RefundOrigin.MANUAL,
            status=S.AWAITING_APPROVAL if needs_approval else S.APPROVED,
            requested_by=requested_by,
            approved_at=None if needs_approval else timezone.now(),
        )
        audit_record(
            actor=requested_by,
            action="refund.requested",
            order_id=order.pk,
            after=_view(refund) | {"reason": refund.reason, "needs_approval": needs_approval},
        )
        if not needs_approval:
            _hold_on_order(order, refund, actor=requested_by)
    logger.info(
        "refund %s requested by %s: %s units, %s",
        refund.pk,
        requested_by,
        amount,
        refund.status,
        extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash},
    )
    if needs_approval:
        return refund
    return _execute_now(refund, actor=requested_by)


def refund_approve(*, refund_id: int, approver: str) -> Refund:
    """A second, different operator approves a refund awaiting approval; it is then held on
    its order and paid. Refuses self-approval, a refund not awaiting approval (so of two
    concurrent approvals one wins and the other is refused), and - rejecting the refund - an
    order that meanwhile stopped being refundable. Takes the order's row lock, then the
    refund's."""
    if not approver.strip():
        raise RefundRefused("name the approving operator (--operator NAME)")
    order_id = Refund.objects.filter(pk=refund_id).values_list("order_id", flat=True).first()
    if order_id is None:
        raise RefundRefused(f"no refund {refund_id}: check the id (python manage.py ... or admin)")
    rejected: RefundRefused | None = None
    with transaction.atomic():
        order = _locked_order(order_id)
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        if refund.status != S.AWAITING_APPROVAL:
            raise RefundRefused(
                f"refund {refund.pk} is not awaiting approval (it is {refund.status}"
                f"{', approved by ' + refund.approved_by if refund.approved_by else ''}); "
                "nothing to approve"
            )
        if _identity(approver) == _identity(refund.requested_by):
            raise RefundRefused(
                f"refund {refund.pk} was requested by {refund.requested_by}: a second, different "
                "operator must approve it"
            )
        try:
            _refusal(order)
            _check_amount(order, int(refund.amount))
        except _Transient:
            raise
        except RefundRefused as exc:
            rejected = exc
            _move(
                refund,
                from_statuses=(S.AWAITING_APPROVAL,),
                to_status=S.REJECTED,
                actor=approver,
                action="refund.rejected",
                last_error=str(exc),
            )
        else:
            _move(
                refund,
                from_statuses=(S.AWAITING_APPROVAL,),
                to_status=S.APPROVED,
                actor=approver,
                action="refund.approved",
                approved_by=approver,
                approved_at=timezone.now(),
            )
            _hold_on_order(order, refund, actor=approver)
    if rejected is not None:
        raise RefundRefused(f"{rejected}; refund {refund_id} is rejected") from rejected
    logger.info("refund %s approved by %s", refund.pk, approver, extra={"order_id": order.pk})
    return _execute_now(refund, actor=approver)


def _execute_now(refund: Refund, *, actor: str) -> Refund:
    """Pay right after approval; when the chain cannot be reached the refund stays APPROVED
    and the retry beat sends it."""
    try:
        return refund_execute(refund_id=refund.pk, actor=actor)
    except ChainUnavailable as exc:
        logger.warning("refund %s approved, not yet sent: %s", refund.pk, exc)
        refund.refresh_from_db()
        return refund


def refund_execute(*, refund_id: int, actor: str) -> Refund:
    """Pay an approved (or reserve-waiting) refund: check the reserve, then submit
    refundDeposit through the chain sender. Idempotent: a refund already sent is returned
    as it is, and the sender keeps one transaction per refund id. Short of reserve it waits
    (WAITING_RESERVE, alert). A vault refusal fails it (its amount goes back to the order).
    Raises ChainUnavailable when the node cannot be reached (retry later)."""
    refund = Refund.objects.select_related("order").get(pk=refund_id)
    if refund.status not in (S.APPROVED, S.WAITING_RESERVE):
        return refund
    balance, floor = reserve_available()
    if balance - floor < refund.amount:
        _wait_for_reserve(refund, balance=balance, floor=floor, actor=actor)
        return refund
    failure = None
    with transaction.atomic():
        refund = Refund.objects.select_for_update().select_related("order").get(pk=refund_id)
        if refund.status not in (S.APPROVED, S.WAITING_RESERVE):
            return refund
        try:
            tx = chain_services.settlement_submit(
                kind=SettlementKind.REFUND,
                onchain_id=int(refund.onchain_id),
                deposit_id=int(refund.order.onchain_id),
                usdt_amount=int(refund.amount),
                token_amount=0,
                order_id=refund.order_id,
                actor=actor,
            )
        except SettlementRejected as exc:
            failure = str(exc)
        else:
            _move(
                refund,
                from_statuses=(S.APPROVED, S.WAITING_RESERVE),
                to_status=S.SENT,
                actor=actor,
                action="refund.sent",
                tx_hash=tx.tx_hash,
                sent_at=timezone.now(),
                last_error="",
            )
            _enqueue(CHECK_TASK, refund.pk, countdown=settings.REFUND_CHECK_SECONDS)
    if failure is not None:
        return _fail(refund, error=failure, reason="rejected", actor=actor)
    return refund


def _wait_for_reserve(refund: Refund, *, balance: int, floor: int, actor: str) -> None:
    message = (
        f"refund {refund.pk} of {_usdt(refund.amount)} (order {refund.order_id}) waits: the "
        f"vault holds {_usdt(balance)}, floor {_usdt(floor)}; fund the vault or lower "
        "RESERVE_FLOOR_USDT"
    )
    with transaction.atomic():
        if not _move(
            refund,
            from_statuses=(S.APPROVED,),
            to_status=S.WAITING_RESERVE,
            actor=actor,
            action="refund.waiting_reserve",
            last_error=message,
        ):
            Refund.objects.filter(pk=refund.pk, status=S.WAITING_RESERVE).update(
                last_error=message, updated_at=timezone.now()
            )
        alert_raise(
            key=RESERVE_SHORT,
            severity=AlertSeverity.CRITICAL,
            source="refunds",
            message=message,
            details={
                "refund_id": refund.pk,
                "amount": int(refund.amount),
                "balance": balance,
                "floor": floor,
            },
        )


def refund_check(*, refund_id: int, actor: str) -> Refund:
    """Move a sent refund along: CONFIRMED (with the mined transaction's hash) once its
    receipt has the configured confirmations, FAILED if it reverted without the vault having
    paid the refund id. Pending: returns it still SENT (check again later)."""
    refund = Refund.objects.get(pk=refund_id)
    if refund.status != S.SENT:
        return refund
    state = chain_services.settlement_check(
        kind=SettlementKind.REFUND, onchain_id=int(refund.onchain_id), actor=actor
    )
    if state == SettlementState.CONFIRMED:
        record = chain_selectors.settlement_get(
            kind=SettlementKind.REFUND, onchain_id=int(refund.onchain_id)
        )
        tx_hash = (record.tx_hash if record is not None else "") or refund.tx_hash
        _move(
            refund,
            from_statuses=(S.SENT,),
            to_status=S.CONFIRMED,
            actor=actor,
            action="refund.confirmed",
            tx_hash=tx_hash,
            confirmed_at=timezone.now(),
        )
        logger.info(
            "refund %s confirmed %s", refund.pk, tx_hash, extra={"order_id": refund.order_id}
        )
    elif state == SettlementState.REVERTED:
        return _fail(
            refund, error="refundDeposit reverted on chain", reason="reverted", actor=actor
        )
    return refund


def _fail(refund: Refund, *, error: str, reason: str, actor: str) -> Refund:
    with transaction.atomic():
        moved = _move(
            refund,
            from_statuses=(S.APPROVED, S.WAITING_RESERVE, S.SENT),
            to_status=S.FAILED,
            actor=actor,
            action="refund.failed",
            last_error=error[:2000],
            failed_at=timezone.now(),
        )
        if moved:
            _release_from_order(refund, actor=actor)
    if moved:
        count_refund_failure(reason=reason)
        logger.error("refund %s failed: %s", refund.pk, error, extra={"order_id": refund.order_id})
    refund.refresh_from_db()
    return refund


# --- beat ----------------------------------------------------------------------------------


def refunds_retry_waiting(*, actor: str) -> int:
    """Send refunds waiting for the reserve (and approved ones a crash left unsent). Resolves
    the reserve alerts once nothing waits and everything committed can be paid. Returns how
    many were sent."""
    stale = timezone.now() - timezone.timedelta(seconds=settings.REFUND_STALE_APPROVED_SECONDS)
    ids = list(
        Refund.objects.filter(status=S.WAITING_RESERVE).values_list("pk", flat=True).order_by("pk")
    ) + list(
        Refund.objects.filter(status=S.APPROVED, updated_at__lt=stale)
        .values_list("pk", flat=True)
        .order_by("pk")
    )
    sent = 0
    for refund_id in ids:
        if refund_execute(refund_id=refund_id, actor=actor).status == S.SENT:
            sent += 1
    if not Refund.objects.filter(status=S.WAITING_RESERVE).exists():
        alert_resolve(key=RESERVE_SHORT)
    balance, floor = reserve_available()
    if balance - committed_units() >= floor:
        alert_resolve(key=RESERVE_SHORT_SETTLEMENT)
    return sent


def refunds_check_sent(*, actor: str) -> int:
    """Check every sent refund (a reaper for check tasks that were lost). Returns how many
    are still pending."""
    pending = 0
    for refund_id in Refund.objects.filter(status=S.SENT).values_list("pk", flat=True):
        if refund_check(refund_id=refund_id, actor=actor).status == S.SENT:
            pending += 1
    return pending


# --- the pipeline's side -----------------------------------------------------------------


def reserve_covers(*, amount: int, order_id: int, actor: str) -> bool:
    """Before a settlement pays `amount` USDT out of the vault: does the balance less the
    floor cover it? If not, raises the `reserve_short_settlement` alert and says False (the
    caller re-schedules; the order waits, neither lost nor failed)."""
    if amount <= 0:
        return True
    balance, floor = reserve_available()
    if balance - floor >= amount:
        return True
    alert_raise(
        key=RESERVE_SHORT_SETTLEMENT,
        severity=AlertSeverity.CRITICAL,
        source=actor,
        message=(
            f"settlement of order {order_id} ({_usdt(amount)}) waits: the vault holds "
            f"{_usdt(balance)}, floor {_usdt(floor)}; fund the vault or lower RESERVE_FLOOR_USDT"
        ),
        details={"order_id": order_id, "amount": amount, "balance": balance, "floor": floor},
    )
    logger.warning("settlement waits for the reserve", extra={"order_id": order_id})
    return False


def refund_record_automatic(*, order: Order, tx_hash: str, actor: str) -> Refund | None:
    """Record the refund a deposit's settlement paid (refund_usdt > 0) as a CONFIRMED
    automatic Refund. Idempotent: one automatic refund per order (unique constraint). Runs
    in the caller's transaction (the one that marks the order settled)."""
    if order.order_type != OrderType.BUY or order.refund_usdt <= 0:
        return None
    existing = Refund.objects.filter(order=order, origin=RefundOrigin.AUTOMATIC).first()
    if existing is not None:
        return existing
    now = timezone.now()
    try:
        with transaction.atomic():
            refund = Refund.objects.create(
                order=order,
                amount=int(order.refund_usdt),
                reason=order.last_error or f"unspent part of the deposit ({order.outcome})",
                origin=RefundOrigin.AUTOMATIC,
                status=S.CONFIRMED,
                requested_by=actor,
                tx_hash=tx_hash,
                sent_at=now,
                confirmed_at=now,
            )
            audit_record(
                actor=actor,
                action="refund.automatic",
                order_id=order.pk,
                after=_view(refund) | {"reason": refund.reason},
            )
    except IntegrityError:
        return Refund.objects.get(order=order, origin=RefundOrigin.AUTOMATIC)
    return refund
