"""Writes of the order lifecycle that other apps call (the listener creates orders here)."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.alerts import alert_raise, alert_resolve
from core.audit import AuditEntry, audit_append_many, audit_record
from core.bulk import bulk_copy_insert, bulk_ids_reserve
from core.metrics import observe_stage
from orders.exceptions import IllegalTransition, OrderError, StaleOrderVersion
from orders.models import Cycle, CycleStatus, Order, OrderStatus, OrderType
from orders.runs import initial_lease, run_enqueue_many, run_take_over, stage_for_status
from orders.stages import Next, Stage
from orders.state import order_record, order_transition

if TYPE_CHECKING:
    from trading.broker import BrokerOrder

logger = logging.getLogger(__name__)

_CANCEL_ATTEMPTS = 5


@dataclass(frozen=True)
class ChainOrderRequest:
    """What the listener decoded from a Deposit or Redeem log, in Bronco's types."""

    chain_id: int
    order_type: str
    onchain_id: int
    tx_hash: str
    log_index: int
    user_address: str
    symbol: str
    usdt_amount: int = 0
    token_amount: int = 0
    # The user's expiry from the chain (aware); None: the vault's default (less a margin). Capped
    # at ORDER_MAX_EXPIRY_SECONDS after the order arrives.
    expires_at: datetime | None = None
    # The user's price bound from the vault's DepositTerms/RedeemTerms (USDT base units per
    # whole share; 0 = none).
    price_bound_units: int = 0


def default_expiry_seconds() -> int:
    """How long an order that names no expiry lives after it arrives: the vault's
    `defaultExpiry()` (chain.selectors, cached) less ORDER_EXPIRY_MARGIN_SECONDS (the vault
    counts from the block, before the order arrives), and never less than half of it; when
    the vault cannot be read, ORDER_DEFAULT_EXPIRY_SECONDS (with a warning)."""
    from chain.exceptions import ChainError  # chain imports this module: import late
    from chain.selectors import vault_default_expiry_seconds

    try:
        vault = vault_default_expiry_seconds()
    except ChainError as exc:
        logger.warning("the vault's defaultExpiry could not be read (%s): using the setting", exc)
        return settings.ORDER_DEFAULT_EXPIRY_SECONDS
    return max(vault - settings.ORDER_EXPIRY_MARGIN_SECONDS, vault // 2)


def order_expiry(
    requested: datetime | None, *, now: datetime, default_seconds: int | None = None
) -> datetime:
    """When an order arriving `now` expires: the user's `requested` expiry, or
    `default_seconds` after now when none (`default_expiry_seconds()` when not given);
    never later than ORDER_MAX_EXPIRY_SECONDS."""
    latest = now + timedelta(seconds=settings.ORDER_MAX_EXPIRY_SECONDS)
    if requested is None:
        if default_seconds is None:
            default_seconds = default_expiry_seconds()
        requested = now + timedelta(seconds=default_seconds)
    return min(requested, latest)


def _enqueue_pipeline(order_ids: Sequence[int]) -> None:
    """Start each new order's first run (generation 0, whose lease the order was created
    with) once the caller's transaction commits, publishing them all through one broker
    connection."""
    ids = list(order_ids)
    if ids:
        transaction.on_commit(
            lambda: run_enqueue_many(gens=dict.fromkeys(ids, 0), nxt=Next(Stage.VALIDATE)),
            robust=True,
        )


_OrderKey = tuple[int, str, int]


def _key(request: ChainOrderRequest) -> _OrderKey:
    return (request.chain_id, request.order_type, int(request.onchain_id))


def _existing_orders(keys: Sequence[_OrderKey]) -> dict[_OrderKey, int]:
    """Ids of the orders that exist for `keys`."""
    found: dict[_OrderKey, int] = {}
    by_kind: dict[tuple[int, str], set[int]] = {}
    for chain_id, order_type, onchain_id in keys:
        by_kind.setdefault((chain_id, order_type), set()).add(onchain_id)
    # By (chain id, type): the unique index's full prefix. Without the type, the index was
    # walked over every order of the chain, once per batch.
    for (chain_id, order_type), ids in by_kind.items():
        rows = Order.objects.filter(
            chain_id=chain_id, order_type=order_type, onchain_id__any=ids
        ).values_list("pk", "onchain_id")
        for pk, onchain_id in rows:
            found[(chain_id, order_type, int(onchain_id))] = pk
    return found


def _kick_cycles(symbols: set[str]) -> None:
    from orders.tasks import cycle_kick  # the tasks import this module: import late

    for symbol in sorted(symbols):
        cycle_kick(symbol)


class _RowAsOrder:
    """An order row about to be COPYed (a dict by attname) read as the Order it will be, for
    `validation_refusal` (which reads fields only): a field the row lacks reads as its model
    default. Building a model instance per row was a tenth of a backfill's time."""

    __slots__ = ("_row",)
    _fields: dict[str, Any] | None = None

    def __init__(self, row: dict[str, object]) -> None:
        self._row = row

    def __getattr__(self, name: str) -> object:
        if name in self._row:
            return self._row[name]
        fields = _RowAsOrder._fields
        if fields is None:
            fields = _RowAsOrder._fields = {f.attname: f for f in Order._meta.concrete_fields}
        if name not in fields:
            raise AttributeError(name)
        return fields[name].get_default()


def _insert_orders(
    requests: Sequence[ChainOrderRequest], actor: str, booked: dict[int, str]
) -> dict[_OrderKey, int]:
    """One COPY of the new orders (ids reserved first) and one of their audit entries. The
    orders that pass validation are booked as they are created (booked_at = now; no
    validate task each: at hundreds of deposits a second those tasks were the limit);
    their ids and symbols are added to `booked`. The others are refused by their validate
    run (`orders.pipeline.validate`, the same rules)."""
    from orders.pipeline.validate import validation_refusal  # the pipeline imports services

    now = timezone.now()
    deadline = now + timezone.timedelta(seconds=settings.ORDER_DEADLINE_SECONDS)
    lease = initial_lease()
    ids = bulk_ids_reserve(Order, len(requests))
    default_expiry = (
        default_expiry_seconds() if any(r.expires_at is None for r in requests) else None
    )
    rows = [
        {
            "id": pk,
            "order_type": r.order_type,
            "chain_id": r.chain_id,
            "onchain_id": int(r.onchain_id),
            "chain_tx_hash": r.tx_hash,
            "log_index": r.log_index,
            "user_address": r.user_address,
            "symbol": r.symbol,
            "stock_code": settings.BRONCO_SYMBOLS.get(r.symbol, ""),
            "usdt_amount": int(r.usdt_amount),
            "token_amount": int(r.token_amount),
            "deadline": deadline,
            "expires_at": order_expiry(r.expires_at, now=now, default_seconds=default_expiry),
            "price_bound": r.price_bound_units,
            "run_lease_until": lease,
            # Every row names the same fields (one COPY): set below when it books.
            "booked_at": None,
        }
        for pk, r in zip(ids, requests, strict=True)
    ]
    booked_now: dict[int, str] = {}
    for row in rows:
        if validation_refusal(_RowAsOrder(row)) is None:  # type: ignore[arg-type]
            row["booked_at"] = now
            booked_now[row["id"]] = row["symbol"]
    bulk_copy_insert(Order, rows)
    audit_append_many(
        [
            AuditEntry(
                actor=actor,
                action="order.created",
                order_id=pk,
                after={
                    "type": r.order_type,
                    "onchain_id": r.onchain_id,
                    "tx_hash": r.tx_hash,
                    "log_index": r.log_index,
                    "user": r.user_address,
                    "symbol": r.symbol,
                    "usdt_amount": r.usdt_amount,
                    "token_amount": r.token_amount,
                    "price_bound": r.price_bound_units,
                    "expires_at": None if r.expires_at is None else r.expires_at.isoformat(),
                },
            )
            for pk, r in zip(ids, requests, strict=True)
        ]
        + [
            AuditEntry(
                actor=actor,
                action="order.booked",
                order_id=pk,
                after={"booked_at": now.isoformat(), "symbol": symbol},
            )
            for pk, symbol in booked_now.items()
        ]
    )
    if len(requests) <= _LOG_EACH_UP_TO:
        for pk, r in zip(ids, requests, strict=True):
            logger.info("order created", extra={"order_id": pk, "tx_hash": r.tx_hash})
    else:
        logger.info("%s orders created, ids %s..%s", len(ids), ids[0], ids[-1])
    observe_stage("validate", 0.0, count=len(booked_now))  # booked as they were created
    booked.update(booked_now)
    return {_key(r): pk for pk, r in zip(ids, requests, strict=True)}


# A batch larger than this logs one line for all its orders rather than one line each.
_LOG_EACH_UP_TO = 100


def orders_create_from_chain_ids(
    *, requests: Sequence[ChainOrderRequest], actor: str, assume_new: bool = False
) -> list[tuple[int, bool]]:
    """The one order of each chain event (the listener's batch), as (order id, created), in
    the order given.

    Idempotent by the unique key (chain id, type, on-chain id): a replayed or duplicated log,
    or the same event twice in one batch, returns the existing order with created False and
    enqueues nothing. Must run inside the caller's transaction; each new order's pipeline is
    enqueued only after that transaction commits. One query finds what exists, one COPY
    creates the rest and one appends their audit entries (`core.bulk`); should the COPY lose
    a race to another writer, it falls back to one order at a time.

    `assume_new=True` (the listener's first try at a batch of new logs) skips the look-up:
    should any order exist, the COPY's unique key refuses it and IntegrityError is raised
    (nothing of the call is kept), for the caller to do its batch again without it.
    """
    order_types = set(OrderType.values)  # a property that builds a list at each read
    for request in requests:
        if request.order_type not in order_types:
            raise ValueError(f"unknown order type {request.order_type!r}")
    keys = [_key(r) for r in requests]
    existing = {} if assume_new else _existing_orders(keys)
    new: dict[_OrderKey, ChainOrderRequest] = {}
    for key, request in zip(keys, requests, strict=True):
        if key not in existing:
            new.setdefault(key, request)
    created: dict[_OrderKey, int] = {}
    booked: dict[int, str] = {}  # order id -> symbol, of the new orders booked at creation
    if new:
        try:
            with transaction.atomic():
                created = _insert_orders(list(new.values()), actor, booked)
        except IntegrityError:
            if assume_new:
                raise
            booked.clear()  # rolled back with the batch
            for key, request in new.items():
                try:
                    with transaction.atomic():
                        created.update(_insert_orders([request], actor, booked))
                except IntegrityError:
                    existing.update(_existing_orders([key]))
        # Only a refusal needs its validate run (which settles it untraded); the booked
        # orders' cycles are asked for after commit.
        _enqueue_pipeline([pk for pk in created.values() if pk not in booked])
        symbols = set(booked.values())
        if symbols:
            transaction.on_commit(lambda: _kick_cycles(symbols), robust=True)
    results: list[tuple[int, bool]] = []
    reported: set[_OrderKey] = set()
    for key in keys:
        if key in created and key not in reported:
            reported.add(key)
            results.append((created[key], True))
        else:
            results.append((created.get(key) or existing[key], False))
    return results


def orders_create_from_chain(
    *, requests: Sequence[ChainOrderRequest], actor: str
) -> list[tuple[Order, bool]]:
    """`orders_create_from_chain_ids` with the orders loaded (one more query)."""
    results = orders_create_from_chain_ids(requests=requests, actor=actor)
    orders = Order.objects.in_bulk([pk for pk, _ in results])
    return [(orders[pk], created) for pk, created in results]


def order_create_from_chain(*, request: ChainOrderRequest, actor: str) -> tuple[Order, bool]:
    """Create the one order for a chain event, or return the existing one (see
    `orders_create_from_chain`, of which this is the single-event form)."""
    (result,) = orders_create_from_chain(requests=[request], actor=actor)
    return result


def order_request_cancel(
    *,
    chain_id: int,
    deposit_id: int,
    tx_hash: str,
    actor: str,
    order_type: str = OrderType.BUY,
) -> Order | None:
    """Record a user's CancelRequested for a deposit (RedeemCancelRequested for a redeem:
    `order_type` SELL, `deposit_id` the redeem id) and wake the pipeline. A cancelled
    order in the book leaves it with everything refunded (returned), no broker request.

    Idempotent: a second request for the same deposit changes nothing. Returns None when no
    such deposit order exists (the listener quarantines that event). A pipeline stage may move
    the order at the same moment: the conditional update then loses, and we re-read and try
    again. A cancel that arrives after the order is terminal is recorded in the audit log
    only: no refund is owed beyond what settlement already paid.
    """
    for _ in range(_CANCEL_ATTEMPTS):
        order = Order.objects.filter(
            chain_id=chain_id, order_type=order_type, onchain_id=deposit_id
        ).first()
        if order is None:
            return None
        if order.cancel_requested_at is not None:
            return order
        if order.is_terminal:
            audit_record(
                actor=actor,
                action="order.cancel_after_terminal",
                order_id=order.pk,
                after={"tx_hash": tx_hash, "status": order.status, "refund_owed": 0},
            )
            return order
        flagged = _cancel_flag(order=order, actor=actor, action="order.cancel_requested")
        if flagged is not None:
            return flagged
    raise StaleOrderVersion(order.pk, order.version)


def _cancel_flag(*, order: Order, actor: str, action: str) -> Order | None:
    """Set the cancel flag (audited) and take the order's run over at once (after commit), so
    the cancel acts now rather than at the run's next step. None when another worker moved
    the order first: the caller re-reads it and tries again."""
    try:
        with transaction.atomic():
            order = order_record(
                order=order, actor=actor, action=action, cancel_requested_at=timezone.now()
            )
            run_take_over(order_id=order.pk)
    except (StaleOrderVersion, IllegalTransition):
        return None
    return order


def order_broker_pushed(broker_order: "BrokerOrder") -> None:
    """A broker push for a cycle's order. A final one (filled, cancelled, failed) has the
    cycle polled now, so it is allocated without waiting for its next poll; anything else
    changes nothing (the cycle's own polling follows it). Never starts a second cycle.
    Runs on the SDK's callback thread: it only reads and enqueues."""
    try:
        if not broker_order.is_final:
            return
        cycle_id = (
            Cycle.objects.filter(client_id=broker_order.client_id, status=CycleStatus.PLACED)
            .values_list("pk", flat=True)
            .first()
        )
        if cycle_id is not None:
            from orders.tasks import cycle_poll  # the tasks import the services: late

            cycle_poll.delay(cycle_id)
    finally:
        connection.close()  # the SDK's thread is long-lived: hold no connection between pushes


def order_operator_cancel(*, order_id: int, actor: str) -> Order:
    """An operator cancels an open deposit: the same path as a user's on-chain cancel (the
    cancel flag, then `order_cancel` re-drives the order's stage after commit, which cancels
    it at the broker and refunds what was not filled).

    Idempotent: an order whose cancel was already requested is returned unchanged. Refuses,
    with `OrderError`, a redeem (its shares are the user's to sell) and a terminal order
    (settled already: a refund is the remedy, not a cancel). Retries a lost optimistic race.
    """
    order = None
    for _ in range(_CANCEL_ATTEMPTS):
        order = Order.objects.filter(pk=order_id).first()
        if order is None:
            raise OrderError(f"order {order_id} does not exist")
        if order.order_type != OrderType.BUY:
            raise OrderError(f"order {order_id} is a redeem: only deposits can be cancelled")
        if order.is_terminal:
            raise OrderError(
                f"order {order_id} is already {order.status}: nothing to cancel "
                "(request a refund if money is still owed)"
            )
        if order.cancel_requested_at is not None:
            return order
        flagged = _cancel_flag(order=order, actor=actor, action="order.operator_cancel_requested")
        if flagged is None:
            continue
        order = flagged
        logger.info(
            "operator cancel requested",
            extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash, "actor": actor},
        )
        return order
    raise StaleOrderVersion(order_id, order.version if order else 0)


def order_operator_retry(*, order_id: int, actor: str) -> str:
    """An operator re-drives an open order: a new run at the stage its status calls for
    (`orders.runs.run_take_over`; the old run, if alive, stops at its next step), audited
    with who asked. Safe at any moment: every stage re-reads state and does nothing when the
    order moved on. Returns the stage; refuses a terminal or unknown order with
    `OrderError`."""
    order = Order.objects.filter(pk=order_id).first()
    if order is None:
        raise OrderError(f"order {order_id} does not exist")
    stage = stage_for_status(order.status)
    if stage is None and order.cycle_id is not None:
        raise OrderError(
            f"order {order_id} takes part in cycle {order.cycle_id}: the cycle scheduler "
            "drives it (retry the cycle's steps from the Cycles page if it is stuck)"
        )
    if stage is None:
        raise OrderError(f"order {order_id} is {order.status}: there is no stage to retry")
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="order.retry_requested",
            order_id=order.pk,
            after={"status": order.status, "stage": stage},
        )
        run_take_over(order_id=order.pk, stage=stage)
    logger.info(
        "operator retry enqueued",
        extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash, "stage": stage},
    )
    return stage


def order_manual_refund_hold(*, order: Order, amount: int, actor: str) -> Order:
    """Take `amount` USDT base units of a (locked, PENDING) deposit out of trading for a
    manual refund: the pipeline then sizes, trades and settles only what remains, and closes
    the order when nothing does (validate runs again, in a new run, after commit). The caller
    holds the order's row lock (`orders.selectors.order_lock`) and has checked the amount."""
    order = order_record(
        order=order,
        actor=actor,
        action="order.manual_refund",
        manual_refund_usdt=int(order.manual_refund_usdt) + int(amount),
        qty=None,
        price=None,
        # Out of the book until validate has looked at what remains (it books it again,
        # or closes the order when too little remains to trade).
        booked_at=None,
    )
    run_take_over(order_id=order.pk, stage=Stage.VALIDATE)
    return order


def order_manual_refund_release(*, order_id: int, amount: int, actor: str) -> Order | None:
    """A failed manual refund's `amount` (USDT base units) goes back to its order: to be
    traded (PENDING) or refunded by the settlement (SETTLING, not yet sent). Returns None when
    released; returns the order, unchanged, when it can no longer take the amount back (it is
    terminal or its settlement was sent): the caller must see the user paid by other means."""
    with transaction.atomic():
        order = Order.objects.select_for_update(of=("self",)).get(pk=order_id)
        if order.is_terminal or order.settlement_tx_hash:
            return order
        changes: dict[str, int] = {
            "manual_refund_usdt": int(order.manual_refund_usdt) - int(amount)
        }
        if order.status == OrderStatus.SETTLING:
            changes["refund_usdt"] = int(order.refund_usdt) + int(amount)
        order_record(order=order, actor=actor, action="order.manual_refund_released", **changes)
    return None


# --- holds: an order whose chain event a reorg replaced, or whose settlement was refused ----


def order_hold(*, order_id: int, reason: str, actor: str) -> Order | None:
    """Hold an open order: the settle stage sends no settlement while it is held (a settlement
    already sent is still followed). Audited (`order.held`). Idempotent: an order already held
    keeps its first reason. Returns None for an unknown or terminal order (nothing to hold)."""
    for _ in range(_CANCEL_ATTEMPTS):
        order = Order.objects.filter(pk=order_id).first()
        if order is None or order.is_terminal:
            return None
        if order.held_at is not None:
            return order
        try:
            order = order_record(
                order=order,
                actor=actor,
                action="order.held",
                held_at=timezone.now(),
                hold_reason=reason[:200],
            )
        except StaleOrderVersion:
            continue
        logger.warning(
            "order held: %s", reason, extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash}
        )
        return order
    raise StaleOrderVersion(order_id, 0)


def order_release_hold(*, order_id: int, actor: str) -> Order | None:
    """Release a hold: the order continues where it stands (a new run at its stage after
    commit). Audited (`order.hold_released`). Idempotent: an order not held is returned as it
    is; None for an unknown order."""
    for _ in range(_CANCEL_ATTEMPTS):
        order = Order.objects.filter(pk=order_id).first()
        if order is None:
            return None
        if order.held_at is None:
            return order
        if order.is_terminal:
            return order
        try:
            with transaction.atomic():
                order = order_record(
                    order=order,
                    actor=actor,
                    action="order.hold_released",
                    held_at=None,
                    hold_reason="",
                )
                stage = stage_for_status(order.status)
                if stage is not None:
                    run_take_over(order_id=order.pk, stage=stage)
        except StaleOrderVersion:
            continue
        logger.info("order hold released", extra={"order_id": order.pk})
        return order
    raise StaleOrderVersion(order_id, 0)


def order_close_vanished(*, order_id: int, actor: str) -> Order | None:
    """Close an open order whose chain event is gone for good (a reorg replaced it and the
    re-read found it nowhere): FAILED with nothing settled on chain (there is no deposit or
    redeem to pay back). When it had traded at the broker, a critical alert says so: shares
    bought or sold for a vanished request are an operator matter. Audited
    (`order.closed_vanished`). Idempotent: a terminal order is returned unchanged."""
    for _ in range(_CANCEL_ATTEMPTS):
        order = Order.objects.filter(pk=order_id).first()
        if order is None:
            return None
        if order.is_terminal:
            return order
        traded = bool(order.futu_order_id) or order.filled_qty > 0
        try:
            with transaction.atomic():
                order = order_transition(
                    order=order,
                    to_status=OrderStatus.FAILED,
                    actor=actor,
                    action="order.closed_vanished",
                    outcome=OrderStatus.FAILED,
                    held_at=None,
                    last_error="its chain event vanished in a reorg: nothing settled",
                )
                if traded:
                    alert_raise(
                        key=f"order.vanished_traded:{order.pk}",
                        message=f"order {order.pk} traded at the broker (order "
                        f"{order.futu_order_id or '-'}, filled {order.filled_qty}) but its chain "
                        "request vanished in a reorg: the position is the operator's to unwind",
                        severity="critical",
                        source=actor,
                        details={
                            "order_id": order.pk,
                            "futu_order_id": order.futu_order_id,
                            "filled_qty": str(order.filled_qty),
                            "tx_hash": order.chain_tx_hash,
                        },
                    )
        except StaleOrderVersion:
            continue
        # Its settlement's "request unknown" warning (orders.pipeline.settle) is answered.
        alert_resolve(key=f"settlement_request_unknown:{order.pk}")
        logger.error(
            "order closed: its chain event vanished",
            extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash, "traded": traded},
        )
        return order
    raise StaleOrderVersion(order_id, 0)


VANISHED_ACTIONS = ("order.closed_vanished", "order.revived")


def vanished_last_actions(order_ids: Sequence[int] | None = None) -> dict[int, Any]:
    """order id -> its latest `order.closed_vanished` / `order.revived` audit entry, for the
    orders of `order_ids` (None: every order) that have one (one query)."""
    from core.models import AuditLog

    entries = AuditLog.objects.filter(action__in=VANISHED_ACTIONS).exclude(order_id=None)
    if order_ids is not None:
        entries = entries.filter(order_id__in=list(order_ids))
    latest: dict[int, Any] = {}
    for entry in entries.order_by("id"):
        latest[entry.order_id] = entry
    return latest


def order_revive_vanished(*, order_id: int, actor: str) -> Order | None:
    """An order closed because its request vanished in a reorg (`order_close_vanished`)
    whose request is on chain after all: the same signed transaction was mined again later
    (a real reorg returns it to the pool; one whose fee cap the base fee had passed waits
    there until the fee falls). The user's USDT (or tokens) are in the vault again, so the
    order must settle: FAILED -> SETTLING (`order.revived`, audited), and its settle run
    starts after commit.

    - Closed while SETTLING: it settles as it would have (its outcome and figures kept).
    - Closed in the book or in a cycle (PENDING, EXECUTING; a cycle allocates only its
      EXECUTING orders, so it took no part in one after the close): it settles with what
      it had got and the rest returned, as an order leaving the book.

    A critical alert says so (`order.revived:<id>`). Returns the order revived, or None when
    `order_id` is not an order closed as vanished (nothing to do; idempotent). Raises
    StaleOrderVersion when the order kept changing under it."""
    from orders.selectors import order_usdt_remaining

    for _ in range(_CANCEL_ATTEMPTS):
        order = Order.objects.filter(pk=order_id).first()
        if order is None or order.status != OrderStatus.FAILED:
            return None
        closing = vanished_last_actions([order.pk]).get(order.pk)
        if closing is None or closing.action != "order.closed_vanished":
            return None
        was = (closing.before or {}).get("status")
        buy = order.order_type == OrderType.BUY
        changes: dict[str, Any]
        if was == OrderStatus.SETTLING:
            changes = {"outcome": (closing.before or {}).get("outcome") or OrderStatus.FAILED}
        elif buy:
            minted = int(order.tokens_minted)
            changes = {"cycle": None, "refund_usdt": order_usdt_remaining(order)}
            changes["outcome"] = OrderStatus.EXECUTED if minted else _untraded_outcome(order)
        else:
            changes = {
                "cycle": None,
                "tokens_returned": int(order.token_amount),
                "outcome": _untraded_outcome(order),
            }
        try:
            with transaction.atomic():
                order = order_transition(
                    order=order,
                    to_status=OrderStatus.SETTLING,
                    actor=actor,
                    action="order.revived",
                    last_error="its request was mined again after the reorg: it settles",
                    **changes,
                )
                run_take_over(order_id=order.pk, stage=Stage.SETTLE)
                # What it traded is its own again, not a position for the operator to unwind.
                alert_resolve(key=f"order.vanished_traded:{order.pk}")
                alert_raise(
                    key=f"order.revived:{order.pk}",
                    message=f"order {order.pk}: its chain request, taken for vanished in a "
                    "reorg, was mined again; the order settles after all (was "
                    f"{was or 'unknown'} when closed)",
                    severity="critical",
                    source=actor,
                    details={"order_id": order.pk, "tx_hash": order.chain_tx_hash, "was": was},
                )
        except StaleOrderVersion:
            continue
        logger.error(
            "order revived: its chain request came back after it was closed",
            extra={"order_id": order.pk, "tx_hash": order.chain_tx_hash},
        )
        return order
    raise StaleOrderVersion(order_id, 0)


def orders_revive_vanished(*, order_ids: Sequence[int], actor: str) -> list[int]:
    """Of `order_ids` (orders whose chain request was just recorded live), revive those
    closed as vanished (`order_revive_vanished`). One query when none is FAILED, which is
    every batch but after a reorg. Returns the ids revived."""
    if not order_ids:
        return []
    failed = list(
        Order.objects.filter(pk__in=list(order_ids), status=OrderStatus.FAILED).values_list(
            "pk", flat=True
        )
    )
    if not failed:
        return []
    revived = []
    for order_id, entry in vanished_last_actions(failed).items():
        if entry.action != "order.closed_vanished":
            continue
        try:
            if order_revive_vanished(order_id=order_id, actor=actor) is not None:
                revived.append(order_id)
        except OrderError as exc:  # never block the listener's batch: say so, loudly
            alert_raise(
                key=f"order.revive_failed:{order_id}",
                message=f"order {order_id}: its request is on chain again but the order "
                f"could not be revived ({exc}); settle it by hand",
                severity="critical",
                source=actor,
                details={"order_id": order_id, "error": str(exc)},
            )
    return revived


def _untraded_outcome(order: Order) -> str:
    return OrderStatus.CANCELED if order.cancel_requested_at is not None else OrderStatus.FAILED
