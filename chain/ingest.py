"""Turning confirmed vault logs into Bronco records: the listener's write side.

`chain_logs_commit` is the one transaction per batch: it locks the contract's checkpoint row,
writes one `ChainEvent` per new log, creates orders (and cancel requests) through the orders
app's services, quarantines what it cannot act on, and moves the checkpoint. The orders app
enqueues its pipeline on commit, so nothing leaves the process for a batch that rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import DataError, IntegrityError, transaction
from django.utils import timezone

from chain.client import RawLog, UndecodableLog, decode_log
from chain.events import (
    CancelRequested,
    ContractEvent,
    Deposit,
    DepositTerms,
    Redeem,
    RedeemCancelRequested,
    RedeemTerms,
)
from chain.models import ChainCursor, ChainEvent, QuarantinedLog
from core.alerts import alert_raise
from core.audit import audit_record
from core.bulk import bulk_copy_insert
from core.exceptions import TIME_LIMITS
from core.models import Alert
from orders.exceptions import OrderError
from orders.models import OrderType
from orders.selectors import order_get
from orders.services import (
    ChainOrderRequest,
    order_close_vanished,
    order_create_from_chain,
    order_hold,
    order_release_hold,
    order_request_cancel,
    orders_create_from_chain_ids,
    orders_revive_vanished,
)

logger = logging.getLogger(__name__)


# Which argument of each vault event names the id it is about: such an event is one per
# (chain id, event name, id) among live rows, wherever it was mined.
VAULT_ID_ARG = {
    "Deposit": "depositId",
    "Redeem": "redeemId",
    "CancelRequested": "depositId",
    "RedeemCancelRequested": "redeemId",
    "DepositTerms": "depositId",
    "RedeemTerms": "redeemId",
    "DepositSettled": "depositId",
    "RedeemSettled": "redeemId",
    "DepositRefunded": "refundId",
    "DepositFilled": "depositId",
    "RedeemFilled": "redeemId",
}
# Holds the listener places carry this reason prefix (only those does a re-read release).
REORG_HOLD = "reorg"


def vault_key(decoded: ContractEvent) -> tuple[str, int] | None:
    """(event name, vault id) of an event that names an id, else None."""
    arg = VAULT_ID_ARG.get(decoded.name)
    if arg is None:
        return None
    return (decoded.name, int(getattr(decoded, decoded.ABI_ARGS[arg])))


@dataclass(frozen=True)
class BatchResult:
    committed: int = 0
    duplicates: int = 0
    quarantined: int = 0
    checkpoint: int = 0


@dataclass(frozen=True)
class Checkpoint:
    block_number: int
    block_hash: str
    head_number: int


def cursor_ensure(*, chain_id: int, address: str, start_block: int) -> Checkpoint:
    """The contract's checkpoint, created at `start_block - 1` when there is none yet."""
    cursor, _ = ChainCursor.objects.get_or_create(
        chain_id=chain_id,
        address=address,
        defaults={"block_number": max(start_block, 0) - 1, "block_hash": ""},
    )
    return Checkpoint(cursor.block_number, cursor.block_hash, cursor.head_number)


def cursor_record_head(*, chain_id: int, address: str, head: int) -> None:
    ChainCursor.objects.filter(chain_id=chain_id, address=address).update(
        head_number=head, updated_at=timezone.now()
    )


def chain_logs_commit(
    *,
    chain_id: int,
    vault: str,
    logs: Sequence[RawLog],
    to_block: int,
    to_block_hash: str,
    head: int,
    actor: str,
) -> BatchResult:
    """Act on every log of the confirmed range (checkpoint, to_block] and move the checkpoint
    to `to_block`, all in one transaction.

    Idempotent: the checkpoint row is locked first and logs at or below it are skipped, and a
    log already recorded (unique chain id, tx hash, log index) is skipped, so overlapping
    deliveries (subscription and backfill, or a restarted listener) never act twice.
    """
    with transaction.atomic():
        cursor = ChainCursor.objects.select_for_update().get(chain_id=chain_id, address=vault)
        if to_block <= cursor.block_number:
            cursor.head_number = head
            cursor.save(update_fields=["head_number", "updated_at"])
            return BatchResult(checkpoint=cursor.block_number)
        new_logs, duplicates = _unseen(
            chain_id=chain_id,
            logs=[log for log in logs if log.block_number > cursor.block_number],
        )
        events, remined = _act_and_write(chain_id=chain_id, vault=vault, logs=new_logs, actor=actor)
        duplicates += remined
        quarantined = len(new_logs) - len(events) - remined
        cursor.block_number = to_block
        cursor.block_hash = to_block_hash
        cursor.head_number = max(head, to_block)
        cursor.save(update_fields=["block_number", "block_hash", "head_number", "updated_at"])
    return BatchResult(
        committed=len(events), duplicates=duplicates, quarantined=quarantined, checkpoint=to_block
    )


def _unseen(*, chain_id: int, logs: Sequence[RawLog]) -> tuple[list[RawLog], int]:
    """`logs` in chain order without those already recorded (a live event or a quarantined
    log at the same tx hash and log index), and how many were dropped so."""
    fresh = sorted(logs, key=lambda log: (log.block_number, log.log_index))
    tx_hashes = {log.tx_hash for log in fresh}
    seen = set(
        ChainEvent.objects.filter(
            chain_id=chain_id, tx_hash__any=tx_hashes, removed_at__isnull=True
        ).values_list("tx_hash", "log_index")
    ) | set(
        QuarantinedLog.objects.filter(chain_id=chain_id, tx_hash__any=tx_hashes).values_list(
            "tx_hash", "log_index"
        )
    )
    new_logs: list[RawLog] = []
    duplicates = 0
    for log in fresh:
        if log.key in seen:
            duplicates += 1
            continue
        seen.add(log.key)
        new_logs.append(log)
    return new_logs, duplicates


def chain_logs_replay(
    *, chain_id: int, vault: str, logs: Sequence[RawLog], actor: str
) -> BatchResult:
    """Act on logs of blocks the checkpoint already passed that Bronco has no record of
    (`listen_chain --replay`, the webhook): what is recorded is skipped, exactly as in
    `chain_logs_commit`, so a replay never doubles anything. The checkpoint does not move;
    logs above it are left to the listener. Holds the cursor row lock, like the listener."""
    with transaction.atomic():
        cursor = ChainCursor.objects.select_for_update().get(chain_id=chain_id, address=vault)
        new_logs, duplicates = _unseen(
            chain_id=chain_id,
            logs=[
                log
                for log in logs
                if log.block_number <= cursor.block_number and log.address.lower() == vault.lower()
            ],
        )
        events, remined = _act_and_write(chain_id=chain_id, vault=vault, logs=new_logs, actor=actor)
    return BatchResult(
        committed=len(events),
        duplicates=duplicates + remined,
        quarantined=len(new_logs) - len(events) - remined,
        checkpoint=cursor.block_number,
    )


def quarantined_log_reprocess(
    *, quarantined_id: int, vault: str, canonical: Callable[[RawLog], bool], actor: str
) -> bool:
    """Act on a quarantined log again (after a fix), as the listener would have. `canonical`
    says whether the node still has the log at its block (a log reorged away is never acted
    on). True when it became an event (the quarantine row resolved, audited with `actor`,
    e.g. "admin:<username>"); False when it still cannot be acted on (it stays quarantined)."""
    with transaction.atomic():
        row = QuarantinedLog.objects.select_for_update().get(pk=quarantined_id)
        if row.resolved_at is not None:
            return False
        log = RawLog(
            address=row.address,
            topics=tuple(row.topics),
            data=row.data,
            block_number=row.block_number,
            block_hash=row.block_hash,
            tx_hash=row.tx_hash,
            log_index=row.log_index,
        )
        if not canonical(log):
            audit_record(
                actor=actor,
                action="chain.quarantine_reprocess_refused",
                after={"tx_hash": row.tx_hash, "log_index": row.log_index, "why": "not on chain"},
            )
            return False
        with transaction.atomic():
            row_key = (row.tx_hash, row.log_index)
            events, _remined = _act_on_batch(
                chain_id=row.chain_id, vault=vault, logs=[log], actor=actor
            )
            _events_write(events)
        done = any((e.tx_hash, e.log_index) == row_key for e in events)
        if done:
            row.resolved_at = timezone.now()
            row.save(update_fields=["resolved_at"])
        audit_record(
            actor=actor,
            action="chain.quarantine_reprocessed" if done else "chain.quarantine_reprocess_failed",
            after={"tx_hash": row.tx_hash, "log_index": row.log_index, "reason": row.reason},
        )
    return done


def _act_and_write(
    *, chain_id: int, vault: str, logs: Sequence[RawLog], actor: str
) -> tuple[list[NewEvent], int]:
    """`_act_on_batch` and the events written. First as if no log of the batch were recorded
    under its vault key and no order existed for it (a backfill of new logs: the look-ups by
    thousands of ids grew with the tables and were most of a 100,000-log backfill's database
    time); the unique keys of orders (chain, type, id) and of live events (chain, event,
    vault id) refuse anything that is, and then the batch is done again, in full, with the
    look-ups (the first try is a savepoint: nothing of it is kept, its on-commit enqueues
    included)."""
    if logs:
        try:
            with transaction.atomic():
                events, remined = _act_on_batch(
                    chain_id=chain_id, vault=vault, logs=logs, actor=actor, optimistic=True
                )
                _events_write(events)
            return events, remined
        except IntegrityError as exc:
            logger.info("the batch meets recorded requests (%s); again with look-ups", exc)
    events, remined = _act_on_batch(chain_id=chain_id, vault=vault, logs=logs, actor=actor)
    _events_write(events)
    return events, remined


def _act_on_batch(
    *,
    chain_id: int,
    vault: str,
    logs: Sequence[RawLog],
    actor: str,
    optimistic: bool = False,
) -> tuple[list[NewEvent], int]:
    """The ChainEvents to write for new `logs` (in chain order), their orders created; the
    logs it cannot act on are quarantined instead, and a log whose event is already recorded
    live under its vault key (the same deposit re-mined elsewhere, delivered again) is
    skipped and counted (second value). Deposits and redeems become orders in one bulk step;
    should that fail on one bad log, every log is taken one at a time, so only that log is
    quarantined. Cancels run after, in order, as they name earlier deposits. A deposit or
    redeem that re-appears after a reorg finds its held order and releases it.
    `optimistic` (see `_act_and_write`) skips the look-ups of live events and of orders by
    vault id, and lets IntegrityError out when a unique key refuses the batch."""
    decoded_logs: list[tuple[RawLog, ContractEvent]] = []
    for log in logs:
        decoded = _decoded(chain_id=chain_id, vault=vault, log=log, actor=actor)
        if decoded is not None:
            decoded_logs.append((log, decoded))
    keys = {k for _, d in decoded_logs if (k := vault_key(d)) is not None}
    live: set[tuple[str, int]] = set()
    if keys and not optimistic:
        live = {
            (name, int(vault_id))
            for name, vault_id in ChainEvent.objects.filter(
                chain_id=chain_id,
                removed_at__isnull=True,
                name__in={k[0] for k in keys},
                vault_id__any=[k[1] for k in keys],
            ).values_list("name", "vault_id")
        }
    actionable: list[tuple[RawLog, ContractEvent]] = []
    requests: dict[tuple[str, int], ChainOrderRequest] = {}
    terms = _terms_in(decoded_logs)
    remined = 0
    for log, decoded in decoded_logs:
        key = vault_key(decoded)
        if key is not None:
            if key in live:
                remined += 1
                continue
            live.add(key)
        if isinstance(decoded, Deposit | Redeem):
            requests[log.key] = _order_request(chain_id=chain_id, event=decoded, terms=terms)
        actionable.append((log, decoded))
    order_ids = _orders_in_bulk(requests=requests, actor=actor, optimistic=optimistic)
    events = []
    for log, decoded in actionable:
        if order_ids is not None and log.key in order_ids:
            event = _event(chain_id=chain_id, log=log, decoded=decoded, order_id=order_ids[log.key])
        else:
            event = _act_on(chain_id=chain_id, log=log, decoded=decoded, actor=actor, terms=terms)
        if event is not None:
            events.append(event)
    # Only a request a reorg removed can re-appear: one query for the batch finds those.
    requested = [e for e in events if e.name in ("Deposit", "Redeem") and e.order_id is not None]
    removed_keys = _removed_unresolved(chain_id=chain_id, events=requested)
    for event in requested:
        if (event.name, int(event.vault_id)) in removed_keys:
            _reappeared(
                chain_id=chain_id,
                event=event,
                request=requests.get((event.tx_hash, event.log_index)),
                actor=actor,
            )
    if not optimistic:  # an optimistic batch's orders are all new
        _revive_closed(chain_id=chain_id, events=requested, actor=actor)
    return events, remined


def _revive_closed(*, chain_id: int, events: Sequence[NewEvent], actor: str) -> None:
    """A deposit or redeem recorded live whose order was closed because the request vanished
    in a reorg: it was mined again after the close (its transaction waited in the pool), so
    the user's USDT or tokens are in the vault again and the order must settle after all
    (`orders.services.orders_revive_vanished`, alerted)."""
    ids = [e.order_id for e in events if e.order_id is not None]
    for order_id in orders_revive_vanished(order_ids=ids, actor=actor):
        chain_alert_raise(
            chain_id=chain_id,
            kind="request_returned",
            message=f"the request of order {order_id}, closed as vanished after a reorg, is "
            "on chain again: the order was revived and settles",
            details={"order_id": order_id},
            actor=actor,
            order_id=order_id,
        )


def _removed_unresolved(*, chain_id: int, events: Sequence[NewEvent]) -> set[tuple[str, int]]:
    """(event name, vault id) of `events` that a reorg removed and no re-read resolved yet."""
    if not events:
        return set()
    open_removed = ChainEvent.objects.filter(
        chain_id=chain_id, removed_at__isnull=False, resolved_at__isnull=True
    )
    if not open_removed.exists():  # no reorg is being healed: nothing can re-appear
        return set()
    return {
        (name, int(vault_id))
        for name, vault_id in ChainEvent.objects.filter(
            chain_id=chain_id,
            removed_at__isnull=False,
            resolved_at__isnull=True,
            name__in={e.name for e in events},
            vault_id__any={e.vault_id for e in events},
        ).values_list("name", "vault_id")
    }


def _reappeared(
    *, chain_id: int, event: NewEvent, request: ChainOrderRequest | None, actor: str
) -> None:
    """A deposit or redeem written live again after a reorg removed it: when its order is
    held by the reorg and names the same request (user, symbol, amount), release it. One
    that differs (never, with ids derived from the request) stays held, alerted."""
    removed = ChainEvent.objects.filter(
        chain_id=chain_id,
        name=event.name,
        vault_id=event.vault_id,
        removed_at__isnull=False,
        resolved_at__isnull=True,
    )
    if not removed.exists():
        return
    order = order_get(order_id=event.order_id)
    if order is None:
        return
    args = event.args
    amount = int(args["usdtAmount"] if event.name == "Deposit" else args["shares"])
    same = (
        order.user_address.lower() == str(args["user"]).lower()
        and order.symbol == (request.symbol if request else order.symbol)
        and int(order.usdt_amount if event.name == "Deposit" else order.token_amount) == amount
    )
    if not same:
        chain_alert_raise(
            chain_id=chain_id,
            kind="remined_request_differs",
            message=f"{event.name} {event.vault_id} re-appeared after a reorg naming another "
            f"request than order {order.pk}: the order stays held",
            details={"order_id": order.pk, "tx_hash": event.tx_hash, "args": args},
            actor=actor,
            order_id=order.pk,
        )
        return
    removed.update(resolved_at=timezone.now())
    if order.held_at is not None and order.hold_reason.startswith(REORG_HOLD):
        order_release_hold(order_id=order.pk, actor=actor)
        logger.warning(
            "%s %s re-appeared after a reorg: order released",
            event.name,
            event.vault_id,
            extra={"order_id": order.pk, "tx_hash": event.tx_hash},
        )


def _decoded(*, chain_id: int, vault: str, log: RawLog, actor: str) -> ContractEvent | None:
    if log.address.lower() != vault.lower():
        log_quarantine(chain_id=chain_id, log=log, reason="foreign_address", actor=actor)
        return None
    try:
        return decode_log(log)
    except UndecodableLog as exc:
        log_quarantine(
            chain_id=chain_id, log=log, reason=exc.reason, detail=exc.detail, actor=actor
        )
        return None


def _orders_in_bulk(
    *, requests: dict[tuple[str, int], ChainOrderRequest], actor: str, optimistic: bool = False
) -> dict[tuple[str, int], int] | None:
    """Order ids by log key for the batch's deposits and redeems, or None when the bulk step
    failed (none of it is kept) and the caller must go one log at a time. `optimistic`:
    no look-up of existing orders, and an IntegrityError (one exists) is raised."""
    if not requests:
        return {}
    try:
        with transaction.atomic():
            results = orders_create_from_chain_ids(
                requests=list(requests.values()), actor=actor, assume_new=optimistic
            )
    except IntegrityError:
        if optimistic:
            raise
        logger.warning("bulk order creation lost a race; one log at a time")
        return None
    except (ValueError, TypeError, OrderError, DataError) as exc:
        logger.warning("bulk order creation failed (%s); one log at a time", exc)
        return None
    return {key: pk for key, (pk, _created) in zip(requests, results, strict=True)}


def _act_on(
    *,
    chain_id: int,
    log: RawLog,
    decoded: ContractEvent,
    actor: str,
    terms: dict[tuple[str, int], DepositTerms | RedeemTerms] | None = None,
) -> NewEvent | None:
    """The ChainEvent to write for one decoded log (its order created, with the user's
    `terms` from its batch, or its cancel recorded), or None when it is quarantined."""
    try:
        with transaction.atomic():
            order_id = _order_for(chain_id=chain_id, decoded=decoded, actor=actor, terms=terms)
    except _Unactionable as exc:
        log_quarantine(
            chain_id=chain_id, log=log, reason=exc.reason, detail=exc.detail, actor=actor
        )
        return None
    except (ValueError, TypeError, OrderError, IntegrityError, DataError) as exc:
        log_quarantine(
            chain_id=chain_id,
            log=log,
            reason="rejected",
            detail=f"{type(exc).__name__}: {exc}",
            actor=actor,
        )
        return None
    return _event(chain_id=chain_id, log=log, decoded=decoded, order_id=order_id)


@dataclass
class NewEvent:
    """A ChainEvent row about to be written (its fields by attname): what a batch builds for
    each log it acts on, written with one COPY (`_events_write`); no model instance is made,
    which was a tenth of a backfill's time."""

    chain_id: int
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    address: str
    name: str
    args: dict[str, Any]
    vault_id: int | None
    order_id: int | None


def _events_write(events: Sequence[NewEvent]) -> None:
    bulk_copy_insert(ChainEvent, [vars(e) for e in events])


def _event(*, chain_id: int, log: RawLog, decoded: ContractEvent, order_id: int | None) -> NewEvent:
    return NewEvent(
        chain_id=chain_id,
        tx_hash=log.tx_hash,
        log_index=log.log_index,
        block_number=log.block_number,
        block_hash=log.block_hash,
        address=log.address,
        name=decoded.name,
        args=decoded.abi_args(),
        vault_id=None if (key := vault_key(decoded)) is None else key[1],
        order_id=order_id,
    )


class _Unactionable(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _terms_in(
    decoded_logs: Sequence[tuple[RawLog, ContractEvent]],
) -> dict[tuple[str, int], DepositTerms | RedeemTerms]:
    """The DepositTerms / RedeemTerms of a batch by (kind, id): the vault emits each right
    after its Deposit / Redeem, in the same transaction (so in the same batch)."""
    found: dict[tuple[str, int], DepositTerms | RedeemTerms] = {}
    for _log, decoded in decoded_logs:
        if isinstance(decoded, DepositTerms):
            found[("BUY", decoded.deposit_id)] = decoded
        elif isinstance(decoded, RedeemTerms):
            found[("SELL", decoded.redeem_id)] = decoded
    return found


def _order_request(
    *,
    chain_id: int,
    event: Deposit | Redeem,
    terms: dict[tuple[str, int], DepositTerms | RedeemTerms] | None = None,
) -> ChainOrderRequest:
    """The order request of a Deposit or Redeem, with its terms (price bound, expiry) when
    the batch carries them (a log from before the vault had terms has none: the defaults)."""
    is_buy = isinstance(event, Deposit)
    vault_id = event.deposit_id if is_buy else event.redeem_id
    term = (terms or {}).get(("BUY" if is_buy else "SELL", vault_id))
    return ChainOrderRequest(
        chain_id=chain_id,
        order_type=OrderType.BUY if is_buy else OrderType.SELL,
        onchain_id=event.deposit_id if is_buy else event.redeem_id,
        tx_hash=event.tx_hash,
        log_index=event.log_index,
        user_address=event.user,
        symbol=event.symbol,
        usdt_amount=event.usdt_units if is_buy else 0,
        token_amount=0 if is_buy else event.token_units,
        price_bound_units=term.price_bound_units if term else 0,
        expires_at=datetime.fromtimestamp(term.expiry, tz=UTC) if term else None,
    )


def _order_for(
    *,
    chain_id: int,
    decoded: ContractEvent,
    actor: str,
    terms: dict[tuple[str, int], DepositTerms | RedeemTerms] | None = None,
) -> int | None:
    if isinstance(decoded, Deposit | Redeem):
        request = _order_request(chain_id=chain_id, event=decoded, terms=terms)
        order, _created = order_create_from_chain(request=request, actor=actor)
        return order.pk
    if isinstance(decoded, CancelRequested):
        order = order_request_cancel(
            chain_id=chain_id,
            deposit_id=decoded.deposit_id,
            tx_hash=decoded.tx_hash,
            actor=actor,
        )
        if order is None:
            raise _Unactionable("cancel_for_unknown_deposit", f"deposit {decoded.deposit_id}")
        return order.pk
    if isinstance(decoded, RedeemCancelRequested):
        order = order_request_cancel(
            chain_id=chain_id,
            deposit_id=decoded.redeem_id,
            tx_hash=decoded.tx_hash,
            actor=actor,
            order_type=OrderType.SELL,
        )
        if order is None:
            raise _Unactionable("cancel_for_unknown_redeem", f"redeem {decoded.redeem_id}")
        return order.pk
    return None


def log_quarantine(
    *, chain_id: int, log: RawLog, reason: str, actor: str, detail: str = ""
) -> QuarantinedLog:
    """Park a log the listener cannot act on, with an audit entry and an alert line.
    Idempotent per (chain id, tx hash, log index)."""
    row, created = QuarantinedLog.objects.get_or_create(
        chain_id=chain_id,
        tx_hash=log.tx_hash,
        log_index=log.log_index,
        defaults={
            "block_number": log.block_number,
            "block_hash": log.block_hash,
            "address": log.address,
            "topics": list(log.topics),
            "data": log.data,
            "reason": reason,
            "detail": detail[:2000],
        },
    )
    if created:
        audit_record(
            actor=actor,
            action="chain.log_quarantined",
            after={
                "tx_hash": log.tx_hash,
                "log_index": log.log_index,
                "address": log.address,
                "reason": reason,
            },
        )
        logger.error(
            "ALERT chain log quarantined: %s %s#%s from %s (%s)",
            reason,
            log.tx_hash,
            log.log_index,
            log.address,
            detail,
            extra={"tx_hash": log.tx_hash, "alert": "chain_quarantine"},
        )
    return row


def chain_alert_raise(
    *,
    chain_id: int,
    kind: str,
    message: str,
    details: dict,
    actor: str,
    order_id: int | None = None,
) -> Alert:
    """Raise critical alert `chain.<kind>` (the operators' one alert list: admin, mail,
    webhook) with an audit entry. Never undoes anything."""
    with transaction.atomic():
        audit_record(actor=actor, action=f"chain.alert.{kind}", order_id=order_id, after=details)
        alert = alert_raise(
            key=f"chain.{kind}",
            message=message,
            severity="critical",
            source=actor,
            details={"chain_id": chain_id, **details},
        )
    logger.critical("ALERT %s: %s", kind, message, extra={"alert": kind, **details})
    return alert


def removed_log_handle(*, chain_id: int, log: RawLog, actor: str) -> bool:
    """A `removed: true` log from the node for an event we acted on: the block it was in was
    replaced. Returns True when it was acted on: the listener then walks back to the common
    ancestor at its next catch-up (`chain_reorg_rewind`), which holds the orders and
    re-reads; nothing is undone here. False when the log was never acted on."""
    return ChainEvent.objects.filter(
        chain_id=chain_id,
        tx_hash=log.tx_hash,
        log_index=log.log_index,
        block_hash=log.block_hash,
        removed_at__isnull=True,
    ).exists()


def stored_block_hashes(*, chain_id: int, vault: str, below: int) -> list[tuple[int, str]]:
    """(block number, hash) Bronco recorded at or below `below`, newest first: the blocks of
    live events acted on. What a walk back to the common ancestor compares with the node."""
    return list(
        ChainEvent.objects.filter(
            chain_id=chain_id,
            address__iexact=vault,
            removed_at__isnull=True,
            block_number__lte=below,
        )
        .values_list("block_number", "block_hash")
        .distinct()
        .order_by("-block_number")
    )


@dataclass(frozen=True)
class Rewind:
    ancestor: int
    removed: int
    held: tuple[int, ...]


def chain_reorg_rewind(
    *,
    chain_id: int,
    vault: str,
    ancestor: int,
    ancestor_hash: str,
    was_block: int,
    was_hash: str,
    now_hash: str,
    actor: str,
) -> Rewind:
    """A reorg replaced the blocks above `ancestor` (the highest block whose stored hash the
    node still has): in one transaction, every live event of a replaced block is marked
    removed (kept as history), the order of each removed Deposit or Redeem is held (no
    settlement sent while held), a critical alert names it all, and the checkpoint rewinds
    to the ancestor so the listener re-reads forward. Re-mined logs are then taken once each
    (by vault key) and release their orders; `reorg_holds_resolve` closes those whose
    request is gone. Idempotent: a second call finds nothing live above the ancestor."""
    now = timezone.now()
    with transaction.atomic():
        cursor = ChainCursor.objects.select_for_update().get(chain_id=chain_id, address=vault)
        replaced = list(
            ChainEvent.objects.select_for_update()
            .filter(chain_id=chain_id, block_number__gt=ancestor, removed_at__isnull=True)
            .order_by("block_number", "log_index")
        )
        ChainEvent.objects.filter(pk__in=[e.pk for e in replaced]).update(removed_at=now)
        held: list[int] = []
        for event in replaced:
            if event.name in ("Deposit", "Redeem") and event.order_id is not None:
                reason = (
                    f"{REORG_HOLD}: {event.name} {event.tx_hash}#{event.log_index} in block "
                    f"{event.block_number} was replaced"
                )
                if order_hold(order_id=event.order_id, reason=reason, actor=actor) is not None:
                    held.append(event.order_id)
        cursor.block_number = ancestor
        cursor.block_hash = ancestor_hash
        cursor.save(update_fields=["block_number", "block_hash", "updated_at"])
        chain_alert_raise(
            chain_id=chain_id,
            kind="deep_reorg",
            message=f"reorg beyond the confirmation depth: block {was_block} replaced; "
            f"re-reading from block {ancestor + 1}; {len(replaced)} events removed, "
            f"{len(held)} orders held",
            details={
                "block_number": was_block,
                "was": was_hash,
                "now": now_hash,
                "ancestor": ancestor,
                "removed": [f"{e.name} {e.vault_id or e.tx_hash}" for e in replaced][:100],
                "held_orders": held[:100],
            },
            actor=actor,
        )
        first_replaced = ancestor + 1
        transaction.on_commit(lambda: _heal_settlements_later(first_replaced))
    return Rewind(ancestor=ancestor, removed=len(replaced), held=tuple(held))


def _heal_settlements_later(from_block: int) -> None:
    """The sender re-checks settlements confirmed in the replaced range (chain queue)."""
    from chain.tasks import settlements_heal

    try:
        settlements_heal.delay(from_block=from_block)
    except TIME_LIMITS:
        raise  # inside chain_logs_replay: the task's time is up, not a failed enqueue
    except Exception as exc:  # noqa: BLE001 - the sweep heals too; the listener carries on
        logger.error("could not enqueue settlements_heal: %s", exc)


def reorg_holds_resolve(
    *,
    chain_id: int,
    checkpoint: int,
    margin: int,
    on_chain: Callable[[str, int], bool],
    actor: str,
    tx_pending: Callable[[str], bool] | None = None,
) -> int:
    """Close the orders whose Deposit/Redeem a reorg removed and the re-read did not find
    again once the checkpoint (which covers confirmed blocks only) passed the block it was
    in by `margin` blocks (the confirmation depth), and the vault does not hold the request
    at its id even unconfirmed (`on_chain(name, vault_id)`: a request re-mined later, still
    unconfirmed, keeps its order held until it is read), and its transaction is not waiting
    in the node's pool either (`tx_pending(tx_hash)`: a reorg returns the replaced blocks'
    transactions to the pool, and one whose fee cap the base fee passed waits there, for a
    minute in the 10,000-order chaos run; its order stays held until it is mined or the
    node drops it). Closed with nothing paid on chain (`orders.services.order_close_vanished`,
    alerting when the order traded); should the request be mined after all, its order is
    revived when the listener records it (`orders.services.orders_revive_vanished`).
    Returns how many were closed."""
    pending = ChainEvent.objects.filter(
        chain_id=chain_id,
        name__in=("Deposit", "Redeem"),
        removed_at__isnull=False,
        resolved_at__isnull=True,
        block_number__lte=checkpoint - margin,
    )
    closed = 0
    for event in pending:
        live = ChainEvent.objects.filter(
            chain_id=chain_id, name=event.name, vault_id=event.vault_id, removed_at__isnull=True
        ).exists()
        if not live and on_chain(event.name, int(event.vault_id)):
            continue
        if not live and tx_pending is not None and tx_pending(event.tx_hash):
            continue
        with transaction.atomic():
            if not live and event.order_id is not None:
                order = order_close_vanished(order_id=event.order_id, actor=actor)
                if order is not None:
                    closed += 1
                    chain_alert_raise(
                        chain_id=chain_id,
                        kind="request_vanished",
                        message=f"{event.name} {event.vault_id} (order {event.order_id}) is gone "
                        "after a reorg: order closed with nothing paid",
                        details={"order_id": event.order_id, "tx_hash": event.tx_hash},
                        actor=actor,
                        order_id=event.order_id,
                    )
            ChainEvent.objects.filter(pk=event.pk).update(resolved_at=timezone.now())
    return closed
