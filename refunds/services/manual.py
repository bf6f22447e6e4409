"""Manual refunds: request, approval by a second operator, payment through the chain
sender (after the reserve check), confirmation, failure, and the beat sweeps."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chain.exceptions import ChainUnavailable, SettlementRejected
from chain.models import SettlementKind
from chain.settlement import RefundPayment, SettlementState, settlement_sender
from core.alerts import alert_raise, alert_resolve
from core.audit import audit_record
from core.metrics import count_refund_failure
from core.models import AlertSeverity
from refunds.exceptions import RefundRefused
from refunds.models import Refund, RefundOrigin
from refunds.selectors import (
    approval_threshold_units,
    committed_units,
    reserve_available,
)
from refunds.services.order_checks import (
    RefusedForNow,
    amount_check,
    order_hold,
    order_lock,
    order_refusal,
    order_release,
    order_remaining,
)
from refunds.services.records import (
    CHECK_TASK,
    RESERVE_SHORT,
    RESERVE_SHORT_SETTLEMENT,
    S,
    enqueue_on_commit,
    operator_identity,
    refund_move,
    refund_view,
    usdt_text,
)

logger = logging.getLogger(__name__)

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
        order = order_lock(order_id)
        order_refusal(order)
        amount = order_remaining(order) if amount is None else amount
        amount_check(order, amount)
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
            after=refund_view(refund) | {"reason": refund.reason, "needs_approval": needs_approval},
        )
        if not needs_approval:
            order_hold(order, refund, actor=requested_by)
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
        order = order_lock(order_id)
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        if refund.status != S.AWAITING_APPROVAL:
            raise RefundRefused(
                f"refund {refund.pk} is not awaiting approval (it is {refund.status}"
                f"{', approved by ' + refund.approved_by if refund.approved_by else ''}); "
                "nothing to approve"
            )
        if operator_identity(approver) == operator_identity(refund.requested_by):
            raise RefundRefused(
                f"refund {refund.pk} was requested by {refund.requested_by}: a second, different "
                "operator must approve it"
            )
        try:
            order_refusal(order)
            amount_check(order, int(refund.amount))
        except RefusedForNow:
            raise
        except RefundRefused as exc:
            rejected = exc
            refund_move(
                refund,
                from_statuses=(S.AWAITING_APPROVAL,),
                to_status=S.REJECTED,
                actor=approver,
                action="refund.rejected",
                last_error=str(exc),
            )
        else:
            refund_move(
                refund,
                from_statuses=(S.AWAITING_APPROVAL,),
                to_status=S.APPROVED,
                actor=approver,
                action="refund.approved",
                approved_by=approver,
                approved_at=timezone.now(),
            )
            order_hold(order, refund, actor=approver)
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
            tx = settlement_sender().submit(
                RefundPayment(
                    refund_id=int(refund.onchain_id),
                    deposit_id=int(refund.order.onchain_id),
                    user=refund.order.user_address,
                    symbol=refund.order.symbol,
                    deposit_usdt_units=int(refund.order.usdt_amount),
                    refund_usdt_units=int(refund.amount),
                    order_id=refund.order_id,
                ),
                actor=actor,
            )
        except SettlementRejected as exc:
            failure = str(exc)
        else:
            refund_move(
                refund,
                from_statuses=(S.APPROVED, S.WAITING_RESERVE),
                to_status=S.SENT,
                actor=actor,
                action="refund.sent",
                tx_hash=tx.tx_hash,
                sent_at=timezone.now(),
                last_error="",
            )
            enqueue_on_commit(CHECK_TASK, refund.pk, countdown=settings.REFUND_CHECK_SECONDS)
    if failure is not None:
        return _fail(refund, error=failure, reason="rejected", actor=actor)
    return refund


def _wait_for_reserve(refund: Refund, *, balance: int, floor: int, actor: str) -> None:
    message = (
        f"refund {refund.pk} of {usdt_text(refund.amount)} (order {refund.order_id}) waits: the "
        f"vault holds {usdt_text(balance)}, floor {usdt_text(floor)}; fund the vault or lower "
        "RESERVE_FLOOR_USDT"
    )
    with transaction.atomic():
        if not refund_move(
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
    state = settlement_sender().check(
        kind=SettlementKind.REFUND, vault_id=int(refund.onchain_id), actor=actor
    )
    if state == SettlementState.CONFIRMED:
        record = settlement_sender().settlement(
            kind=SettlementKind.REFUND, vault_id=int(refund.onchain_id)
        )
        tx_hash = (record.tx_hash if record is not None else "") or refund.tx_hash
        refund_move(
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
        moved = refund_move(
            refund,
            from_statuses=(S.APPROVED, S.WAITING_RESERVE, S.SENT),
            to_status=S.FAILED,
            actor=actor,
            action="refund.failed",
            last_error=error[:2000],
            failed_at=timezone.now(),
        )
        if moved:
            order_release(refund, actor=actor)
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
