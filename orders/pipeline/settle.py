"""Settle: send the on-chain settlement once and confirm it."""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from chain.exceptions import SettlementRejected
from chain.settlement import (
    DepositSettlement,
    RedeemSettlement,
    Settlement,
    SettlementState,
    settlement_sender,
)
from core.alerts import alert_raise, alert_resolve
from core.audit import audit_deferred, audit_record
from core.models import Alert
from core.money import TOKEN_UNIT
from orders.models import Allocation, Order, OrderType
from orders.pipeline.common import (
    SETTLE,
    SETTLING_ACTIONS,
    Next,
    S,
    observe_since,
    observe_since_many,
    settlement_kind,
    stage_actor,
)
from orders.runs import leases_hold
from orders.services import order_hold, order_release_hold
from orders.state import order_transition, orders_transition_many
from refunds import selectors as refund_selectors
from refunds import services as refund_services

logger = logging.getLogger(__name__)


def order_settle(*, order_id: int) -> Next | None:
    """Send (once) and confirm the on-chain settlement; on confirmation the order takes its
    terminal outcome. A settlement that reverts for any reason but "already settled" is
    alerted and retried, never dropped. Before sending, waits (re-scheduled) while a manual
    refund of the order is unpaid, and while the vault's reserve does not cover the USDT the
    settlement pays (alerted)."""
    order = Order.objects.get(pk=order_id)
    if order.status != S.SETTLING:
        return None
    kind = settlement_kind(order)
    usdt = _usdt_paid(order)
    if not order.settlement_tx_hash:
        if refund_selectors.order_refunds_in_flight(order_id=order.pk):
            return Next(SETTLE, countdown=settings.REFUND_CHECK_SECONDS)
        if not refund_services.reserve_covers(
            amount=usdt, order_id=order.pk, actor=stage_actor("settle")
        ):
            return Next(SETTLE, countdown=settings.RESERVE_WAIT_SECONDS)
        if order.held_at is not None:
            # Held (its chain event was replaced by a reorg, or the vault refused it):
            # nothing is sent until the hold is released.
            return Next(SETTLE, countdown=settings.ORDER_SETTLE_CHECK_SECONDS)
        try:
            sent = _send_batched(order)
        except SettlementRejected as exc:
            if exc.request_unknown and _request_may_return(order=order, kind=kind, exc=exc):
                return Next(SETTLE, countdown=settings.ORDER_RETRY_SECONDS)
            _hold_refused(order=order, kind=kind, reason=f"settlement refused: {exc}")
            return Next(SETTLE, countdown=settings.ORDER_SETTLE_CHECK_SECONDS)
        if not sent:
            # Another worker is sending it in its batch right now: check again shortly.
            return Next(SETTLE, countdown=settings.ORDER_SETTLE_CHECK_SECONDS)
        order.refresh_from_db()
    state = settlement_sender().check(
        kind=kind, vault_id=int(order.onchain_id), actor=stage_actor("settle")
    )
    if state == SettlementState.CONFIRMED:
        record = settlement_sender().settlement(kind=kind, vault_id=int(order.onchain_id))
        updates = {}
        if record is not None and record.tx_hash and record.tx_hash != order.settlement_tx_hash:
            updates["settlement_tx_hash"] = record.tx_hash
        with transaction.atomic():
            if order.held_at is not None:
                order_release_hold(order_id=order.pk, actor=stage_actor("settle"))
                order.refresh_from_db()
            order_transition(
                order=order,
                to_status=order.outcome,
                actor=stage_actor("settle"),
                action="order.settled",
                **updates,
            )
            refund_services.refund_record_automatic(
                order=order, tx_hash=order.settlement_tx_hash, actor=stage_actor("settle")
            )
        _request_alerts_resolve([order.pk])
        observe_since(order, "settle", since=SETTLING_ACTIONS)
        observe_since(order, "end_to_end", since=("order.created",))
        logger.info(
            "order settled",
            extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash, "outcome": order.outcome},
        )
        return None
    if state == SettlementState.REVERTED:
        # Not "already settled" (that counts as confirmed): alert, and try again once the
        # vault would accept it. Never dropped: the order stays SETTLING until it settles.
        logger.error("settlement reverted", extra={"order_id": order.pk})
        _hold_refused(order=order, kind=kind, reason="settlement reverted on chain")
        audit_record(
            actor=stage_actor("settle"),
            action="order.settlement_reverted",
            order_id=order.pk,
            after={"tx_hash": order.settlement_tx_hash},
        )
        # Resent only once an eth_call shows the vault would now take it (e.g. the reserve
        # was refilled); a mismatch never passes, so it is never resent as it is.
        settlement_sender().resubmit(
            kind=kind, vault_id=int(order.onchain_id), actor=stage_actor("settle")
        )
        return Next(SETTLE, countdown=settings.ORDER_RETRY_SECONDS)
    return Next(SETTLE, countdown=settings.ORDER_SETTLE_CHECK_SECONDS)


def settlement_request(
    order: Order, *, last_cycles: Mapping[int, int] | None = None
) -> DepositSettlement | RedeemSettlement:
    """The vault call that settles `order`, naming what it settles (user, symbol, amount)
    and, for an order that traded in netting cycles, its last cycle, its average price per
    share (USDT base units per whole share: rounded down for a deposit and up for a redeem,
    so the vault's own check of charge and proceeds holds exactly) and Bronco's fee.
    `last_cycles` (order id -> its last cycle, from `last_cycles_of`) saves the query per
    order when many are built at once."""
    if last_cycles is not None:
        last = last_cycles.get(order.pk)
    else:
        last = order.allocations.order_by("-cycle_id").values_list("cycle_id", flat=True).first()
    traded = last is not None
    if order.order_type == OrderType.BUY:
        minted = int(order.tokens_minted)
        price = (int(order.cost_usdt) * TOKEN_UNIT) // minted if minted else 0
        return DepositSettlement(
            deposit_id=int(order.onchain_id),
            user=order.user_address,
            symbol=order.symbol,
            deposit_usdt_units=int(order.usdt_amount),
            mint_token_units=minted,
            refund_usdt_units=int(order.refund_usdt),
            order_id=order.pk,
            cycle_id=last if traded else None,
            price_per_share_units=price if traded else None,
            fee_units=int(order.fees_usdt) if traded else None,
        )
    sold = int(order.token_amount) - int(order.tokens_returned)
    price = -((-int(order.cost_usdt) * TOKEN_UNIT) // sold) if sold else 0
    return RedeemSettlement(
        redeem_id=int(order.onchain_id),
        user=order.user_address,
        symbol=order.symbol,
        redeem_token_units=int(order.token_amount),
        payout_usdt_units=int(order.payout_usdt),
        return_token_units=int(order.tokens_returned),
        order_id=order.pk,
        cycle_id=last if traded else None,
        price_per_share_units=price if traded else None,
        fee_units=int(order.fees_usdt) if traded else None,
    )


def last_cycles_of(order_ids: Sequence[int]) -> dict[int, int]:
    """Order id -> the last cycle it took part in (orders that never traded are absent), in
    one query."""
    return dict(
        Allocation.objects.filter(order_id__in=list(order_ids))
        .values("order_id")
        .annotate(last=Max("cycle_id"))
        .values_list("order_id", "last")
    )


def _usdt_paid(order: Order) -> int:
    """USDT base units the order's settlement pays: a deposit's refund, a redeem's payout."""
    return int(order.refund_usdt if order.order_type == OrderType.BUY else order.payout_usdt)


def _send_batched(order: Order) -> bool:
    """Send `order`'s settlement together with the other settling orders of its kind that
    wait to be sent (up to CHAIN_SETTLEMENT_BATCH_MAX ids per transaction; each id at most
    once in the vault), as far as the reserve covers what they pay. Row locks (skip
    locked) keep two workers from batching the same order. False when another worker holds
    this order's row (it is sending it). A batch the vault would refuse is retried with this
    order alone, so one bad element never blocks the others; SettlementRejected then means
    this order's own settlement is refused."""
    actor = stage_actor("settle")
    with transaction.atomic():
        me = (
            Order.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(pk=order.pk, status=S.SETTLING, settlement_tx_hash="", held_at__isnull=True)
            .first()
        )
        if me is None:
            return False
        balance, floor = refund_selectors.reserve_available()
        room = balance - floor - _usdt_paid(me)
        batch = [me]
        others = (
            Order.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(
                status=S.SETTLING,
                order_type=me.order_type,
                settlement_tx_hash="",
                held_at__isnull=True,
            )
            .exclude(pk=me.pk)
            .order_by("pk")[: max(settings.CHAIN_SETTLEMENT_BATCH_MAX - 1, 0)]
        )
        for other in others:
            paid = _usdt_paid(other)
            if paid > room or refund_selectors.order_refunds_in_flight(order_id=other.pk):
                continue
            room -= paid
            batch.append(other)
        try:
            _submit_recorded(batch, actor=actor)
        except SettlementRejected:
            if len(batch) == 1:
                raise
            _submit_recorded([me], actor=actor)
        # The node calls above ran under these rows' locks, which the beats skip.
        leases_hold(o.pk for o in batch)
    return True


def _submit_recorded(batch: list[Order], *, actor: str) -> list[Order]:
    """Send the settlements of `batch` (deposits and redeems, row-locked by the caller) in
    one vault transaction (or more: `submit_batch` splits what one cannot carry) and record
    each order's hash: one UPDATE and one audit append for the batch (the audit chain's lock
    is held until the caller's transaction commits, and every other writer waits for it).
    The send runs in a savepoint, so a refusal leaves no rows behind.
    Returns the orders as they now are. Raises SettlementRejected when the vault would
    refuse the batch."""
    with transaction.atomic():
        last = last_cycles_of([o.pk for o in batch])
        settlements = settlement_sender().submit_batch(
            [settlement_request(o, last_cycles=last) for o in batch], actor=actor
        )
    return orders_transition_many(
        moves=[
            (o, None, {"settlement_tx_hash": s.tx_hash})
            for o, s in zip(batch, settlements, strict=True)
        ],
        actor=actor,
        action="order.settlement_sent",
    )


def _request_alert_key(order_id: int) -> str:
    return f"settlement_request_unknown:{order_id}"


def _request_may_return(*, order: Order, kind: str, exc: SettlementRejected) -> bool:
    """The vault holds no request at the order's id (UnknownDeposit / UnknownRedeem) although
    the listener recorded it: the node asked lags its peers, or a reorg is between its
    revert and the re-mined blocks. Not a refusal for good while that can pass: a warning
    alert is raised (counted on every try) and True returned (the caller retries after
    ORDER_RETRY_SECONDS, nothing sent). A request that really left the chain is the
    listener's to settle (its event replaced: the order is held for the reorg, and closed
    when the request does not come back). Past ORDER_REQUEST_UNKNOWN_GRACE_SECONDS from the
    first such refusal the warning is closed and False returned: the caller holds the order
    with a critical alert, as any refusal."""
    key = _request_alert_key(order.pk)
    alert = alert_raise(
        key=key,
        message=(
            f"{kind} {int(order.onchain_id)} (order {order.pk}): the vault holds no request at "
            f"this id on the node asked ({exc}); retried every {settings.ORDER_RETRY_SECONDS:g} "
            "s (a lagging node or a reorg in progress), held when it lasts "
            f"{settings.ORDER_REQUEST_UNKNOWN_GRACE_SECONDS} s"
        ),
        source=stage_actor("settle"),
        details={"order_id": order.pk, "error": exc.error_name},
    )
    waited = (timezone.now() - alert.created_at).total_seconds()
    if waited < settings.ORDER_REQUEST_UNKNOWN_GRACE_SECONDS:
        logger.warning(
            "settlement of order %s waits for its request to be on chain: %s", order.pk, exc
        )
        return True
    alert_resolve(key=key)
    return False


def _request_alerts_resolve(order_ids: Sequence[int]) -> None:
    """Close the "request unknown" warnings of settled orders (one query for them all;
    usually none is open)."""
    keys = [_request_alert_key(pk) for pk in order_ids]
    for key in Alert.objects.filter(key__in=keys, resolved_at__isnull=True).values_list(
        "key", flat=True
    ):
        alert_resolve(key=key)


def _hold_refused(*, order: Order, kind: str, reason: str) -> None:
    """A settlement the vault refused: the order is held (no new settlement is sent) and a
    critical alert raised at once. Never silent, never resent blindly."""
    order_hold(order_id=order.pk, reason=reason, actor=stage_actor("settle"))
    alert_raise(
        key=f"settlement_reverted:{order.pk}",
        message=f"{kind} {int(order.onchain_id)} (order {order.pk}): {reason}; order held",
        severity="critical",
        source=stage_actor("settle"),
        details={"order_id": order.pk, "tx_hash": order.settlement_tx_hash, "reason": reason},
    )


# --- settlement by the batch: one task sends a batch of ready orders and follows it ---------


@dataclass
class GroupNext:
    """What `orders_settle_group` asks next. `follow`: the ids of each sent transaction
    still unconfirmed, one list per transaction (one task follows each, after
    ORDER_SETTLE_CHECK_SECONDS). `alone`: orders handed back to their own run's `order_settle`
    (a hold, a refusal, a revert, a wait for a refund or the reserve: the per-order stage
    keeps those guarantees), each with its Next."""

    follow: list[list[int]] = field(default_factory=list)
    alone: dict[int, Next] = field(default_factory=dict)


def orders_settle_group(*, order_ids: Sequence[int]) -> GroupNext:
    """Settle many SETTLING orders in one step: the unsent ones are sent in batched
    transactions (one row-lock pass, one `submit_batch` per CHAIN_SETTLEMENT_BATCH_MAX ids,
    one bulk transition recording their hashes); the sent ones are checked with one
    `check_many` per kind (one receipt read per transaction) and the confirmed ones take
    their outcome in one conditional bulk transition with their automatic refunds recorded
    in bulk and their latencies observed once for the lot.

    Whatever is not the common path goes back to the order's own `order_settle` (in
    `GroupNext.alone`): a held order, one with a manual refund unpaid, one the reserve does
    not cover, a batch the vault would refuse (retried alone there, so only the refused
    order is held and alerted), a settlement that reverted (held, alerted, resubmitted only
    when the vault would accept). Safe to run beside those per-order tasks: every move is a
    conditional update under the rows' locks, so each order settles once."""
    out = GroupNext()
    orders = list(Order.objects.filter(pk__in=list(order_ids), status=S.SETTLING).order_by("pk"))
    if not orders:
        return out
    waiting = refund_selectors.orders_refunds_in_flight(order_ids=[o.pk for o in orders])
    sent_before: list[Order] = []
    unsent: list[Order] = []
    for order in orders:
        if order.held_at is not None or order.pk in waiting:
            out.alone[order.pk] = Next(SETTLE)
        elif order.settlement_tx_hash:
            sent_before.append(order)
        else:
            unsent.append(order)
    if unsent:
        sent_now = _send_group(unsent, out)
        # Just broadcast (after commit): the first receipt can only come with the next block.
        _follow_by_tx(sent_now, out)
    if sent_before:
        _confirm_group(orders=sent_before, out=out)
    return out


def _follow_by_tx(orders: Sequence[Order], out: GroupNext) -> None:
    by_tx: dict[str, list[int]] = {}
    for order in orders:
        by_tx.setdefault(order.settlement_tx_hash, []).append(order.pk)
    out.follow.extend(by_tx.values())


def _send_group(orders: list[Order], out: GroupNext) -> list[Order]:
    """Send the settlements of `orders` (unsent, not held) in batches of up to
    CHAIN_SETTLEMENT_BATCH_MAX ids, deposits and redeems together (the vault's settleBatch:
    one transaction, not one per kind), as far as the reserve covers what they pay. Each
    batch is its own transaction: its rows locked (skip locked), sent, its orders' hashes
    recorded in one bulk transition, then committed, so the audit chain's lock (taken by
    the first audit append, held to commit) never waits on another batch's node requests.
    Orders another worker holds the lock of (it is sending them) are left to their own run;
    so are those the reserve does not cover (the per-order stage alerts and waits) and
    those of a batch the vault would refuse. Returns the orders sent, with their hashes."""
    balance, floor = refund_selectors.reserve_available()
    room = balance - floor
    covered: list[Order] = []
    for order in orders:
        paid = _usdt_paid(order)
        if paid > room:
            out.alone[order.pk] = Next(SETTLE)  # its own stage alerts and waits
            continue
        room -= paid
        covered.append(order)
    size = max(1, settings.CHAIN_SETTLEMENT_BATCH_MAX)
    sent: list[Order] = []
    for start in range(0, len(covered), size):
        sent.extend(_send_batch(covered[start : start + size], out))
    return sent


def _send_batch(chunk: list[Order], out: GroupNext) -> list[Order]:
    actor = stage_actor("settle")
    # The audit entries go in at the end: the chain's lock is not held over the orders'
    # UPDATE and lease renewals.
    with transaction.atomic(), audit_deferred():
        locked = list(
            Order.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(
                pk__in=[o.pk for o in chunk],
                status=S.SETTLING,
                settlement_tx_hash="",
                held_at__isnull=True,
            )
            .order_by("pk")
        )
        mine = {o.pk for o in locked}
        for order in chunk:
            if order.pk not in mine:
                out.alone[order.pk] = Next(SETTLE, countdown=settings.ORDER_SETTLE_CHECK_SECONDS)
        if not locked:
            return []
        try:
            sent = _submit_recorded(locked, actor=actor)
        except SettlementRejected:
            # One bad element: each goes alone, so only it is held and alerted.
            for order in locked:
                out.alone[order.pk] = Next(SETTLE)
            sent = []
        # The node calls above ran under these rows' locks, which the beats skip: sent or
        # refused, their leases are renewed before the locks go.
        leases_hold(o.pk for o in locked)
        return sent


def _confirm_group(*, orders: list[Order], out: GroupNext) -> None:
    """Check the sent settlements of `orders` with one `check_many` per kind (a transaction
    that carries both kinds is checked by each: once the first has judged it final, the
    second only reads the rows; while it is pending, both read its receipt), settle the
    confirmed ones in one bulk transition, hand the reverted (and any unknown) to their own
    stage, and ask to follow the pending ones per transaction."""
    actor = stage_actor("settle")
    confirmed: dict[int, str] = {}
    pending: list[Order] = []
    for kind in ("deposit", "redeem"):
        by_id = {int(o.onchain_id): o for o in orders if settlement_kind(o) == kind}
        if by_id:
            found = settlement_sender().check_many(kind=kind, vault_ids=list(by_id), actor=actor)
            _sort_checked(by_id, found, confirmed=confirmed, pending=pending, out=out)
    _follow_by_tx(pending, out)
    if confirmed:
        _settle_confirmed(confirmed, out)


def _sort_checked(
    by_id: dict[int, Order],
    found: Mapping[int, Settlement],
    *,
    confirmed: dict[int, str],
    pending: list[Order],
    out: GroupNext,
) -> None:
    for vault_id, order in by_id.items():
        settlement = found.get(vault_id)
        if settlement is None or settlement.state == SettlementState.REVERTED:
            out.alone[order.pk] = Next(SETTLE)  # hold + alert + resubmit, as ever
        elif settlement.state == SettlementState.CONFIRMED:
            confirmed[order.pk] = settlement.tx_hash
        else:
            pending.append(order)


def _settle_confirmed(tx_by_order: dict[int, str], out: GroupNext) -> None:
    """Orders whose settlement is confirmed take their outcome: one conditional bulk
    transition under their row locks (an order another task settled first is no longer
    SETTLING and is skipped; a held one goes to its own stage, which releases the hold),
    their automatic refunds recorded in bulk, their latencies observed once."""
    actor = stage_actor("settle")
    with transaction.atomic(), audit_deferred():
        locked = list(
            Order.objects.select_for_update(of=("self",))
            .filter(pk__in=list(tx_by_order), status=S.SETTLING)
            .order_by("pk")
        )
        moves = []
        for order in locked:
            if order.held_at is not None:
                out.alone[order.pk] = Next(SETTLE)
                continue
            tx_hash = tx_by_order[order.pk]
            changes = {}
            if tx_hash and tx_hash != order.settlement_tx_hash:
                changes["settlement_tx_hash"] = tx_hash
            moves.append((order, order.outcome, changes))
        settled = orders_transition_many(moves=moves, actor=actor, action="order.settled")
        refund_services.refunds_record_automatic_many(orders=settled, actor=actor)
    ids = [o.pk for o in settled]
    _request_alerts_resolve(ids)
    observe_since_many(ids, "settle", since=SETTLING_ACTIONS)
    observe_since_many(ids, "end_to_end", since=("order.created",))
    if settled:
        logger.info(
            "orders settled",
            extra={"orders": len(settled), "tx_hash": tx_by_order[settled[0].pk]},
        )
