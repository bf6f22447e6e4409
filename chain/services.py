"""The settlement sender: the one service that builds, signs, sends and tracks the vault's
settlement transactions (settleDeposit / settleRedeem) and manual refunds (refundDeposit,
kind "refund", keyed by the refund id). `ChainSettlementSender` offers it to the orders and
refunds apps as the real `chain.settlement.SettlementSender`.

Guarantees:
- At most one SettlementTx per (chain, kind, id); the vault itself refuses a second settlement,
  so no retry, crash or race can pay twice.
- One nonce sequence per key on a chain, allocated under a row lock (NonceSequence), so all
  workers sending with the key take distinct, consecutive nonces.
- The nonce and the signed transaction are committed before broadcasting: whatever crashes,
  `settlement_check` finds the row and re-broadcasts or replaces it (same nonce, higher fee).
- An "already settled" revert (or the vault reporting the id settled) is recognised as settled
  by an earlier attempt, not as an error; for a refund, "RefundIdUsed" (the vault reporting
  the refund id paid) is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from chain import selectors
from chain.client import (
    ChainClient,
    Receipt,
    SignedTx,
    address_of_key,
    chain_client,
    event_topic,
)
from chain.deployment import contract_set
from chain.events import SettlementSkipped
from chain.exceptions import (
    ChainError,
    ChainUnavailable,
    ContractReverted,
    NotConfigured,
    SettlementRejected,
    TransactionRejected,
)
from chain.models import (
    BatchKind,
    NonceSequence,
    SettlementAttempt,
    SettlementBatch,
    SettlementKind,
    SettlementStatus,
    SettlementTx,
)
from chain.settlement import (
    BATCH_CALLS,
    MIXED_BATCH_CALL,
    DepositSettlement,
    RedeemSettlement,
    RefundPayment,
    Settlement,
    SettlementRequest,
    SettlementState,
    batch_call,
)
from core.audit import AuditEntry, audit_record, audit_record_many
from core.secrets import SecretUnavailable, VaultUnavailable, get_secret

logger = logging.getLogger(__name__)


def _operator_key() -> str:
    """The operator's signing key: from Vault when VAULT_ADDR is set (production always),
    else from CHAIN_OPERATOR_PRIVATE_KEY. Never logged (the log filter redacts it too).
    Raises VaultUnavailable (transient: the task retries) when Vault cannot give it, and
    NotConfigured when it is not set at all."""
    try:
        return get_secret("operator_private_key")
    except VaultUnavailable:
        raise
    except SecretUnavailable as exc:
        raise NotConfigured(str(exc)) from None


# The revert that means "an earlier attempt already did this", per kind.
# The vault's log for a settled id: (event, topic position of the id).
_SETTLED_EVENT = {
    SettlementKind.DEPOSIT: ("DepositSettled", 1),
    SettlementKind.REDEEM: ("RedeemSettled", 1),
    SettlementKind.REFUND: ("DepositRefunded", 2),
}

_ALREADY_DONE = {
    SettlementKind.DEPOSIT: "AlreadySettled",
    SettlementKind.REDEEM: "AlreadySettled",
    SettlementKind.REFUND: "RefundIdUsed",
}


def _row_values(request: SettlementRequest) -> dict[str, int | str | None]:
    """How a request is stored on its SettlementTx (columns shared by every kind)."""
    extra: dict[str, int | None] = {"cycle_id": None, "price_per_share": None, "fee_usdt": None}
    match request:
        case DepositSettlement():
            usdt, tokens, deposit_id = request.refund_usdt_units, request.mint_token_units, None
            amount = request.deposit_usdt_units
            extra = {
                "cycle_id": request.cycle_id,
                "price_per_share": request.price_per_share_units,
                "fee_usdt": request.fee_units,
            }
        case RedeemSettlement():
            usdt, tokens, deposit_id = request.payout_usdt_units, request.return_token_units, None
            amount = request.redeem_token_units
            extra = {
                "cycle_id": request.cycle_id,
                "price_per_share": request.price_per_share_units,
                "fee_usdt": request.fee_units,
            }
        case RefundPayment():
            usdt, tokens, deposit_id = request.refund_usdt_units, 0, request.deposit_id
            amount = request.deposit_usdt_units
    return {
        "onchain_id": request.vault_id,
        "deposit_id": deposit_id,
        "user_address": request.user,
        "symbol": request.symbol,
        "request_amount": amount,
        "usdt_amount": usdt,
        "token_amount": tokens,
        **extra,
    }


def _opt(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def request_of_row(row: SettlementTx) -> SettlementRequest:
    """The request a SettlementTx was made for (to sign it again)."""
    vault_id, usdt, tokens = int(row.onchain_id), int(row.usdt_amount), int(row.token_amount)
    named = {
        "user": row.user_address,
        "symbol": row.symbol,
        "order_id": row.order_id,
    }
    cycle = {
        "cycle_id": _opt(row.cycle_id),
        "price_per_share_units": _opt(row.price_per_share),
        "fee_units": _opt(row.fee_usdt),
    }
    amount = int(row.request_amount)
    if row.kind == SettlementKind.DEPOSIT:
        return DepositSettlement(
            deposit_id=vault_id,
            deposit_usdt_units=amount,
            mint_token_units=tokens,
            refund_usdt_units=usdt,
            **named,
            **cycle,
        )
    if row.kind == SettlementKind.REDEEM:
        return RedeemSettlement(
            redeem_id=vault_id,
            redeem_token_units=amount,
            payout_usdt_units=usdt,
            return_token_units=tokens,
            **named,
            **cycle,
        )
    if row.kind == SettlementKind.REFUND and row.deposit_id is not None:
        return RefundPayment(
            refund_id=vault_id,
            deposit_id=int(row.deposit_id),
            deposit_usdt_units=amount,
            refund_usdt_units=usdt,
            **named,
        )
    raise ValueError(f"settlement {row.pk}: unknown kind {row.kind!r}")


# What carries a nonce and its signed attempts: one settlement, or a batch of them.
Carrier = SettlementTx | SettlementBatch


def _vault_call_of(carrier: Carrier) -> tuple[str, tuple]:
    """The vault function and arguments that `carrier`'s transaction calls."""
    if isinstance(carrier, SettlementBatch):
        members = [request_of_row(m) for m in carrier.settlements.order_by("id")]
        if not members:  # every id left it (very rare): an empty call, which reverts
            if carrier.kind == BatchKind.MIXED:
                return MIXED_BATCH_CALL, ([], [])
            return BATCH_CALLS[SettlementKind(carrier.kind)], ([],)
        return batch_call(members)  # type: ignore[arg-type]
    return request_of_row(carrier).vault_call()


def _bumped(value: int) -> int:
    return -(-value * (100 + settings.CHAIN_FEE_BUMP_PERCENT) // 100)


def nonce_allocate(*, client: ChainClient, chain_id: int, address: str) -> int:
    """The next nonce of `address`, under the NonceSequence row lock. Must run inside the
    transaction that records what the nonce is used for, so it is consumed only if that
    commits. Never below the node's pending count (a key also used elsewhere stays in step).

    The lock is held from here to the caller's commit, so the node's pending count is read
    before it is taken: in the usual case (the count at or below `next_nonce`, which covers
    every earlier allocation, committed before the lock is granted) nothing is asked of the
    node under the lock. A count above `next_nonce` is read again under the lock and that
    value is used, as before: a count read before `nonce_heal` lowered the sequence (the
    node dropped transactions) may be stale-high and would leave a gap. What the early read
    can miss is a transaction another program sends with the same key in that moment,
    which a read under the lock could miss a moment later too: the count is a floor for
    outside use of the key, not a lock on it."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("nonce_allocate must run inside a transaction")
    pending = client.pending_nonce(address)
    try:
        with transaction.atomic():
            NonceSequence.objects.get_or_create(
                chain_id=chain_id, address=address, defaults={"next_nonce": pending}
            )
    except IntegrityError:
        pass  # another worker created the row first; we lock it below
    seq = NonceSequence.objects.select_for_update().get(chain_id=chain_id, address=address)
    if pending > seq.next_nonce:
        pending = client.pending_nonce(address)  # the node is ahead: ask again, under the lock
    nonce = max(seq.next_nonce, pending)
    seq.next_nonce = nonce + 1
    seq.save(update_fields=["next_nonce", "updated_at"])
    return nonce


def settlement_submit(*, request: SettlementRequest, actor: str) -> SettlementTx:
    """Settle a deposit (settleDeposit), a redeem (settleRedeem), or pay a manual refund
    (refundDeposit, keyed by its refund id): `request` says which, with what.

    Idempotent: a second call for the same (kind, vault id) returns the existing SettlementTx
    and sends nothing (ValueError if it asks for other amounts). When the vault already
    reports the id settled (an earlier attempt whose record was lost; for a refund:
    RefundIdUsed), the row is CONFIRMED with `already_settled` and nothing is sent. Raises
    SettlementRejected when the vault would refuse it for good (unknown id, refund above the
    deposit, a refund of a settled deposit), ChainUnavailable when the node cannot be reached
    (retry the task). The transaction is broadcast after the caller's transaction commits;
    follow it with `settlement_check`.
    """
    kind, vault_id, order_id = request.kind, request.vault_id, request.order_id
    fn, args = request.vault_call()
    chain_id = settings.CHAIN_ID
    existing = SettlementTx.objects.filter(
        chain_id=chain_id, kind=kind, onchain_id=vault_id
    ).first()
    if existing is not None:
        _check_same(existing, request)
        return existing

    key = _operator_key()
    sender = address_of_key(key)
    vault = contract_set().vault
    client = chain_client()
    base = {
        "chain_id": chain_id,
        "kind": kind,
        **_row_values(request),
        "order_id": order_id,
        "sender": sender,
    }
    # Encoded once, before the nonce lock: signing under it is then only the signature.
    call = client.prepare(contract="BroncoVault", address=vault, fn=fn, args=args)
    try:
        gas = client.estimate_call_gas(call, sender=sender)
    except ContractReverted as exc:
        if exc.error_name != _ALREADY_DONE[SettlementKind(kind)]:
            raise SettlementRejected(
                f"{fn}({vault_id}): {exc.error_name or exc} {exc.error_args or ''}",
                error_name=exc.error_name or "",
            ) from exc
        return _record_already_settled(base=base, actor=actor)

    fees = client.fee_quote(min_priority_fee=settings.CHAIN_MIN_PRIORITY_FEE_WEI)
    tip = fees.max_priority_fee_per_gas
    max_fee = min(2 * fees.base_fee_per_gas + tip, settings.CHAIN_MAX_FEE_PER_GAS_WEI)
    with transaction.atomic():
        nonce = nonce_allocate(client=client, chain_id=chain_id, address=sender)
        signed = client.sign_call(
            private_key=key,
            call=call,
            nonce=nonce,
            gas_limit=gas * settings.CHAIN_GAS_LIMIT_PERCENT // 100,
            max_fee_per_gas=max_fee,
            max_priority_fee_per_gas=min(tip, max_fee),
            chain_id=chain_id,
        )
        try:
            with transaction.atomic():
                row = SettlementTx.objects.create(
                    **base, nonce=nonce, tx_hash=signed.tx_hash, status=SettlementStatus.SIGNED
                )
        except IntegrityError:
            transaction.set_rollback(True)
            row = None
        else:
            _attempt_create(row, signed)
            audit_record(
                actor=actor,
                action="chain.settlement_signed",
                order_id=order_id,
                after=_audit_view(row),
            )
            row_pk, raw = row.pk, signed.raw
            transaction.on_commit(lambda: _broadcast(pk=row_pk, raw=raw, actor=actor))
    if row is None:
        existing = SettlementTx.objects.get(chain_id=chain_id, kind=kind, onchain_id=vault_id)
        _check_same(existing, request)
        return existing
    row.refresh_from_db()
    return row


def _check_same(row: SettlementTx, request: SettlementRequest) -> None:
    if request_of_row(row) != replace(request, order_id=row.order_id):
        raise ValueError(
            f"settlement {row.kind} {row.onchain_id} exists with other amounts: "
            f"{request_of_row(row)} != {request}"
        )


def _audit_view(row: SettlementTx) -> dict:
    return {
        "kind": row.kind,
        "onchain_id": int(row.onchain_id),
        **({"deposit_id": int(row.deposit_id)} if row.deposit_id is not None else {}),
        "usdt_amount": int(row.usdt_amount),
        "token_amount": int(row.token_amount),
        "sender": row.sender,
        "nonce": row.nonce,
        "tx_hash": row.tx_hash,
        "status": row.status,
    }


def _attempt_create(row: Carrier, signed: SignedTx) -> SettlementAttempt:
    owner = {"batch": row} if isinstance(row, SettlementBatch) else {"settlement": row}
    return SettlementAttempt.objects.create(
        **owner,
        tx_hash=signed.tx_hash,
        nonce=signed.nonce,
        max_fee_per_gas=signed.max_fee_per_gas,
        max_priority_fee_per_gas=signed.max_priority_fee_per_gas,
        gas_limit=signed.gas_limit,
        raw_tx=signed.raw,
    )


def _record_already_settled(*, base: dict, actor: str) -> SettlementTx:
    try:
        with transaction.atomic():
            row = SettlementTx.objects.create(
                **base,
                status=SettlementStatus.CONFIRMED,
                already_settled=True,
                confirmed_at=timezone.now(),
            )
            audit_record(
                actor=actor,
                action="chain.settlement_already_settled",
                order_id=base["order_id"],
                after=_audit_view(row),
            )
    except IntegrityError:
        row = SettlementTx.objects.get(
            chain_id=base["chain_id"], kind=base["kind"], onchain_id=base["onchain_id"]
        )
    logger.info(
        "settlement %s %s already settled on chain",
        base["kind"],
        base["onchain_id"],
        extra={"order_id": base["order_id"]},
    )
    return row


def _carrier_view(carrier: Carrier) -> dict:
    if isinstance(carrier, SettlementBatch):
        return {
            "batch": carrier.pk,
            "kind": carrier.kind,
            "ids": [int(i) for i in carrier.settlements.values_list("onchain_id", flat=True)],
            "sender": carrier.sender,
            "nonce": carrier.nonce,
            "tx_hash": carrier.tx_hash,
            "status": carrier.status,
        }
    return _audit_view(carrier)


def _audit_carrier(
    carrier: Carrier,
    *,
    actor: str,
    action: str,
    before: dict | None = None,
    extra: dict | None = None,
) -> None:
    """One audit entry per settlement the carrier holds (a batch: one per id, naming its
    order), so every order's trail shows what happened to its money."""
    rows = list(carrier.settlements.all()) if isinstance(carrier, SettlementBatch) else [carrier]
    # One append for the whole batch: the audit chain's lock is held until the caller's
    # transaction commits, so one append per id made every other writer wait.
    audit_record_many(
        [
            AuditEntry(
                actor=actor,
                action=action,
                order_id=row.order_id,
                before=before,
                after=_audit_view(row) | (extra or {}),
            )
            for row in rows
        ]
    )


def _sync_members(batch: SettlementBatch) -> None:
    """Bring a batch's settlements to the batch's state. A reverted batch leaves each id
    REVERTED unless the vault reports it settled (another transaction paid it)."""
    values = {
        "tx_hash": batch.tx_hash,
        "block_number": batch.block_number,
        "last_error": batch.last_error,
        "sent_at": batch.sent_at,
        "updated_at": timezone.now(),
    }
    members = batch.settlements.all()
    if batch.status == SettlementStatus.REVERTED:
        for row in members:
            settled = selectors.is_settled(kind=row.kind, onchain_id=int(row.onchain_id))
            SettlementTx.objects.filter(pk=row.pk).update(
                **values,
                status=SettlementStatus.CONFIRMED if settled else SettlementStatus.REVERTED,
                already_settled=settled,
                confirmed_at=batch.confirmed_at,
            )
        return
    # An id the batch skipped keeps the transaction that did settle it (`_batch_skipped`).
    members.exclude(already_settled=True).update(
        **values, status=batch.status, confirmed_at=batch.confirmed_at
    )


def _broadcast(*, pk: int, raw: str, actor: str, batch: bool = False) -> None:
    """Send a committed attempt (a first one, a replacement or a re-sign: each is committed
    before it reaches the node, so a transaction that settles is never unknown to the
    database). Failure leaves the row for settlement_check to retry."""
    model = SettlementBatch if batch else SettlementTx
    client = chain_client()
    try:
        tx_hash = client.send_raw(raw)
    except (ChainUnavailable, TransactionRejected) as exc:
        model.objects.filter(pk=pk).update(last_error=str(exc)[:2000])
        logger.warning("settlement %s%s broadcast failed: %s", "batch " * batch, pk, exc)
        return
    now = timezone.now()
    updated = model.objects.filter(
        pk=pk, status__in=(SettlementStatus.SIGNED, SettlementStatus.SENT)
    ).update(status=SettlementStatus.SENT, sent_at=now, updated_at=now)
    if updated:
        carrier = model.objects.get(pk=pk)
        if isinstance(carrier, SettlementBatch):
            _sync_members(carrier)
        _audit_carrier(carrier, actor=actor, action="chain.settlement_sent")
        logger.info("settlement sent %s", tx_hash, extra={"tx_hash": tx_hash})


def settlement_check(
    *, kind: str, vault_id: int, actor: str = "settlement_check"
) -> SettlementState:
    """Where the settlement of (kind, vault id) stands, moving its record along.

    CONFIRMED once a receipt of any of its attempts has the configured confirmations and
    succeeded, or reverted while the vault reports the id settled (an earlier attempt won).
    REVERTED when it reverted and the id is still unsettled (the caller decides what next;
    a critical alert is raised). PENDING otherwise; on the way it re-broadcasts an attempt
    the node does not know, and replaces one waiting longer than
    CHAIN_SETTLEMENT_STUCK_SECONDS with the same nonce and a higher fee. A settlement sent
    in a batch is checked through its batch (all its ids move together). Holds the row (or
    batch) lock throughout, so concurrent checks do not replace twice. Raises
    SettlementTx.DoesNotExist when nothing was submitted.
    """
    chain_id = settings.CHAIN_ID
    row = SettlementTx.objects.get(chain_id=chain_id, kind=kind, onchain_id=vault_id)
    if row.status in (SettlementStatus.CONFIRMED, SettlementStatus.REVERTED):
        return SettlementState(row.status)
    client = chain_client()
    with transaction.atomic():
        carrier: Carrier
        if row.batch_id is not None:
            carrier = SettlementBatch.objects.select_for_update().get(pk=row.batch_id)
        else:
            carrier = SettlementTx.objects.select_for_update().get(pk=row.pk)
        _carrier_check(client=client, carrier=carrier, actor=actor)
    row.refresh_from_db()
    if row.status in (SettlementStatus.CONFIRMED, SettlementStatus.REVERTED):
        return SettlementState(row.status)
    return SettlementState.PENDING


def settlements_check_many(
    *, kind: str, vault_ids: Sequence[int], actor: str = "settlement_check"
) -> list[SettlementTx]:
    """`settlement_check` for many ids of one kind: every carrier (a batch, or a lone
    settlement) that holds an unfinished one is checked once under its lock, so a batch of
    N ids costs one receipt read, not N. Returns the rows of the ids that were submitted, as
    they now stand (an id never submitted is absent)."""
    chain_id = settings.CHAIN_ID
    ids = sorted({int(i) for i in vault_ids})
    if not ids:
        return []
    rows = SettlementTx.objects.filter(chain_id=chain_id, kind=kind, onchain_id__in=ids)
    open_rows = rows.exclude(status__in=(SettlementStatus.CONFIRMED, SettlementStatus.REVERTED))
    batches = sorted(set(open_rows.filter(batch__isnull=False).values_list("batch_id", flat=True)))
    singles = sorted(open_rows.filter(batch__isnull=True).values_list("pk", flat=True))
    if batches or singles:
        client = chain_client()
        for model, pks in ((SettlementBatch, batches), (SettlementTx, singles)):
            for pk in pks:
                with transaction.atomic():
                    carrier = model.objects.select_for_update().get(pk=pk)
                    _carrier_check(client=client, carrier=carrier, actor=actor)
    return list(rows.order_by("onchain_id"))


def _carrier_check(*, client: ChainClient, carrier: Carrier, actor: str) -> None:
    """settlement_check's work on a locked carrier."""
    if carrier.status in (SettlementStatus.CONFIRMED, SettlementStatus.REVERTED):
        if isinstance(carrier, SettlementBatch):
            _sync_members(carrier)
        return
    # Only the current nonce's attempts count: a resubmission after a revert takes a
    # fresh nonce, and the reverted attempt's receipt must not be judged again.
    attempts = list(carrier.attempts.filter(nonce=carrier.nonce).order_by("-id"))
    receipt = None
    for attempt in attempts:
        receipt = client.receipt(attempt.tx_hash)
        if receipt is not None:
            break
    if receipt is not None:
        _judge_receipt(client=client, row=carrier, receipt=receipt, actor=actor)
        return
    if not attempts:
        return
    latest = attempts[0]
    if not client.transaction_known(latest.tx_hash):
        _rebroadcast(client=client, row=carrier, attempt=latest, actor=actor)
    elif _waited_too_long(latest):
        _replace(client=client, row=carrier, latest=latest, actor=actor)


def _waited_too_long(latest: SettlementAttempt) -> bool:
    since = latest.created_at
    return timezone.now() - since >= timedelta(seconds=settings.CHAIN_SETTLEMENT_STUCK_SECONDS)


def _judge_receipt(*, client: ChainClient, row: Carrier, receipt: Receipt, actor: str) -> None:
    confirmations = client.block_number() - receipt.block_number + 1
    row.tx_hash = receipt.tx_hash
    row.block_number = receipt.block_number
    if confirmations < settings.CHAIN_SETTLEMENT_CONFIRMATIONS:
        row.save(update_fields=["tx_hash", "block_number", "updated_at"])
        if isinstance(row, SettlementBatch):
            _sync_members(row)
        return
    before = _carrier_view(row)
    if receipt.succeeded:
        row.status = SettlementStatus.CONFIRMED
        action = "chain.settlement_confirmed"
    elif isinstance(row, SettlementTx) and selectors.is_settled(
        kind=row.kind, onchain_id=int(row.onchain_id)
    ):
        row.status = SettlementStatus.CONFIRMED
        settled_by = _settlement_event_tx(client=client, row=row)
        if settled_by is not None:
            row.tx_hash, row.block_number = settled_by
        row.already_settled = row.tx_hash not in _attempt_hashes(row)
        action = (
            "chain.settlement_already_settled"
            if row.already_settled
            else "chain.settlement_confirmed"
        )
    else:
        row.status = SettlementStatus.REVERTED
        row.last_error = f"reverted in block {receipt.block_number}"
        action = "chain.settlement_reverted"
    row.confirmed_at = timezone.now()
    row.save()
    if isinstance(row, SettlementBatch):
        _sync_members(row)
        if row.status == SettlementStatus.CONFIRMED:
            _batch_skipped(client=client, batch=row, receipt=receipt, actor=actor)
    _audit_carrier(
        row,
        actor=actor,
        action=action,
        before=before,
        extra={"block_number": receipt.block_number},
    )
    if row.status == SettlementStatus.REVERTED:
        _alert_refused(row, reason=row.last_error, actor=actor)
    log = logger.info if row.status == SettlementStatus.CONFIRMED else logger.error
    log("settlement %s %s", row, row.status, extra={"tx_hash": receipt.tx_hash})


def _batch_skipped(
    *, client: ChainClient, batch: SettlementBatch, receipt: Receipt, actor: str
) -> None:
    """The ids a confirmed batch skipped (SettlementSkipped in its receipt's block: the vault
    had them settled by another transaction, e.g. one whose record was lost) are recorded as
    already settled, with the transaction that did settle them when it can be found. One
    log query per batch; a node that will not answer leaves them as confirmed by the batch
    (they are settled either way, and were paid once)."""
    try:
        logs = client.get_logs(
            from_block=receipt.block_number,
            to_block=receipt.block_number,
            address=contract_set().vault,
            topics=[event_topic("SettlementSkipped")],
        )
    except ChainError as exc:
        logger.warning("batch %s: could not read its skipped ids: %s", batch.pk, exc)
        return
    # SettlementSkipped(uint8 indexed kind, uint256 indexed id): a mixed batch holds both.
    skipped = {
        (SettlementSkipped.KINDS.get(int(log.topics[1], 16)), int(log.topics[2], 16))
        for log in logs
        if log.tx_hash.lower() == receipt.tx_hash.lower() and len(log.topics) > 2
    }
    rows = batch.settlements.filter(onchain_id__in=[vault_id for _, vault_id in skipped])
    for row in rows:
        if (row.kind, int(row.onchain_id)) not in skipped:
            continue
        before = _audit_view(row)
        settled_by = _settlement_event_tx(client=client, row=row)
        if settled_by is not None:
            row.tx_hash, row.block_number = settled_by
        row.already_settled = True
        row.save(update_fields=["tx_hash", "block_number", "already_settled", "updated_at"])
        audit_record(
            actor=actor,
            action="chain.settlement_already_settled",
            order_id=row.order_id,
            before=before,
            after=_audit_view(row) | {"skipped_by_batch": batch.tx_hash},
        )


def _alert_refused(carrier: Carrier, *, reason: str, actor: str) -> None:
    """A settlement the vault refused is never silent: one critical alert per id."""
    from chain.ingest import chain_alert_raise

    rows = list(carrier.settlements.all()) if isinstance(carrier, SettlementBatch) else [carrier]
    for row in rows:
        if row.status != SettlementStatus.REVERTED and isinstance(carrier, SettlementBatch):
            continue
        chain_alert_raise(
            chain_id=row.chain_id,
            kind=f"settlement_refused:{row.pk}",
            message=f"the vault refused settlement {row.kind} {int(row.onchain_id)} "
            f"(order {row.order_id}): {reason}",
            details={
                "kind": row.kind,
                "vault_id": str(row.onchain_id),
                "reason": reason,
                "tx_hash": row.tx_hash,
                "order_id": row.order_id,
            },
            actor=actor,
            order_id=row.order_id,
        )


_NONCE_TOO_LOW = ("nonce too low", "nonce has already been used", "oldnonce")
_REPLACEMENT_UNDERPRICED = ("replacement transaction underpriced", "replacement underpriced")
_FEE_CAP_TOO_LOW = (
    "less than block base fee",
    "fee cap less than",
    "feecap",
    "fee cap too low",
    "max fee per gas less than",
    "transaction underpriced",
)


def _says(exc: Exception, hints: tuple[str, ...]) -> bool:
    message = str(exc).lower()
    return any(hint in message for hint in hints)


def _attempt_hashes(row: Carrier) -> set[str]:
    return set(row.attempts.values_list("tx_hash", flat=True))


def _settlement_event_tx(*, client: ChainClient, row: SettlementTx) -> tuple[str, int] | None:
    """(tx hash, block) of the vault's DepositSettled / RedeemSettled / DepositRefunded log
    for this id within the last CHAIN_SETTLEMENT_EVENT_LOOKBACK_BLOCKS, or None (not found,
    or the node would not say)."""
    name, position = _SETTLED_EVENT[SettlementKind(row.kind)]
    id_topic = "0x" + int(row.onchain_id).to_bytes(32, "big").hex()
    topics: list[str | None] = [event_topic(name)] + [None] * (position - 1) + [id_topic]
    try:
        head = client.block_number()
        logs = client.get_logs(
            from_block=max(0, head - settings.CHAIN_SETTLEMENT_EVENT_LOOKBACK_BLOCKS),
            to_block=head,
            address=contract_set().vault,
            topics=topics,
        )
    except ChainError as exc:
        logger.warning("settlement %s: could not look for its event: %s", row, exc)
        return None
    return (logs[-1].tx_hash, logs[-1].block_number) if logs else None


def _settled_elsewhere(*, client: ChainClient, row: Carrier, actor: str) -> bool:
    """Checked before any re-sign with a new nonce: did an earlier attempt (any nonce)
    succeed, or does the vault already report the id settled? Moves the row when it can (the
    recorded hash is the transaction that emitted the settlement event) and returns True:
    then nothing may be signed. A settled id whose transaction the node does not show yet (a
    lagging backend) stays PENDING, to be confirmed by a later check: never a second send."""
    for attempt in row.attempts.order_by("-id"):
        receipt = client.receipt(attempt.tx_hash)
        if receipt is not None and receipt.succeeded:
            _judge_receipt(client=client, row=row, receipt=receipt, actor=actor)
            return True
    if isinstance(row, SettlementBatch):
        return False  # a batch skips settled ids on chain (SettlementSkipped)
    if not selectors.is_settled(kind=row.kind, onchain_id=int(row.onchain_id)):
        return False
    settled_by = _settlement_event_tx(client=client, row=row)
    if settled_by is None:
        row.last_error = "the vault reports it settled; its transaction is not visible yet"
        row.save(update_fields=["last_error", "updated_at"])
        logger.warning("settlement %s settled on chain; waiting to see its transaction", row)
        return True
    before = _carrier_view(row)
    row.tx_hash, row.block_number = settled_by
    row.already_settled = row.tx_hash not in _attempt_hashes(row)
    row.status = SettlementStatus.CONFIRMED
    row.confirmed_at = timezone.now()
    row.save()
    _audit_carrier(
        row,
        actor=actor,
        action=(
            "chain.settlement_already_settled"
            if row.already_settled
            else "chain.settlement_confirmed"
        ),
        before=before,
        extra={"block_number": row.block_number, "found_by": "settlement event"},
    )
    return True


def _rebroadcast(
    *, client: ChainClient, row: Carrier, attempt: SettlementAttempt, actor: str
) -> None:
    """The node does not have the latest attempt: send it again. What a refusal means:
    - nonce too low: the nonce is used. If by one of ours or the id is settled on chain,
      record that (`_settled_elsewhere`); otherwise it went to a transaction not ours, and
      the settlement is re-signed with a new nonce.
    - fee cap below the base fee, or an underpriced replacement: re-signed with the same
      nonce and a fresh fee quote (bumped), up to CHAIN_MAX_FEE_PER_GAS_WEI.
    """
    try:
        client.send_raw(attempt.raw_tx)
    except TransactionRejected as exc:
        row.last_error = str(exc)[:2000]
        row.save(update_fields=["last_error", "updated_at"])
        if _says(exc, _NONCE_TOO_LOW):
            _resign(client=client, row=row, latest=attempt, new_nonce=True, actor=actor)
        elif _says(exc, _REPLACEMENT_UNDERPRICED) or _says(exc, _FEE_CAP_TOO_LOW):
            _resign(client=client, row=row, latest=attempt, new_nonce=False, actor=actor)
        else:
            logger.warning("settlement %s rebroadcast refused: %s", row, exc)
        return
    if row.status == SettlementStatus.SIGNED:
        row.status = SettlementStatus.SENT
    row.sent_at = timezone.now()
    row.save(update_fields=["status", "sent_at", "updated_at"])
    if isinstance(row, SettlementBatch):
        _sync_members(row)
    _audit_carrier(row, actor=actor, action="chain.settlement_sent")


def _replace(*, client: ChainClient, row: Carrier, latest: SettlementAttempt, actor: str) -> None:
    _resign(client=client, row=row, latest=latest, new_nonce=False, actor=actor)


def _resign(
    *,
    client: ChainClient,
    row: Carrier,
    latest: SettlementAttempt,
    new_nonce: bool,
    actor: str,
) -> None:
    """Sign again with a fresh fee quote, bumped above the latest attempt: the same nonce (a
    replacement), or a fresh one (only after `_settled_elsewhere` said no). The fee is capped
    at CHAIN_MAX_FEE_PER_GAS_WEI, with the alert `chain.settlement_fee_cap:<id>` when the
    market asks more. The attempt is committed before it is broadcast (on commit of the
    caller's transaction, which holds the carrier's row lock)."""
    if new_nonce and _settled_elsewhere(client=client, row=row, actor=actor):
        return
    fees = client.fee_quote(min_priority_fee=settings.CHAIN_MIN_PRIORITY_FEE_WEI)
    tip = max(_bumped(int(latest.max_priority_fee_per_gas)), fees.max_priority_fee_per_gas)
    max_fee = max(_bumped(int(latest.max_fee_per_gas)), 2 * fees.base_fee_per_gas + tip)
    cap = settings.CHAIN_MAX_FEE_PER_GAS_WEI
    if max_fee > cap:
        _alert_fee_cap(row, wanted=max_fee, base_fee=fees.base_fee_per_gas, actor=actor)
        if int(latest.max_fee_per_gas) >= cap and not new_nonce:
            logger.error("settlement %s stuck at the fee cap", row)
            return
        max_fee = cap
    fn, args = _vault_call_of(row)
    call = client.prepare(contract="BroncoVault", address=contract_set().vault, fn=fn, args=args)
    key = _operator_key()
    nonce = (
        nonce_allocate(client=client, chain_id=row.chain_id, address=row.sender)
        if new_nonce
        else latest.nonce
    )
    signed = client.sign_call(
        private_key=key,
        call=call,
        nonce=nonce,
        gas_limit=latest.gas_limit,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=min(tip, max_fee),
        chain_id=row.chain_id,
    )
    before = _carrier_view(row)
    _attempt_create(row, signed)
    row.nonce = nonce
    row.tx_hash = signed.tx_hash
    if new_nonce:
        row.status = SettlementStatus.SIGNED
    row.save()
    if isinstance(row, SettlementBatch):
        _sync_members(row)
    _audit_carrier(
        row,
        actor=actor,
        action="chain.settlement_replaced",
        before=before,
        extra={"max_fee_per_gas": max_fee, "new_nonce": new_nonce},
    )
    pk, raw, batch = row.pk, signed.raw, isinstance(row, SettlementBatch)
    transaction.on_commit(lambda: _broadcast(pk=pk, raw=raw, actor=actor, batch=batch))


def _alert_fee_cap(row: Carrier, *, wanted: int, base_fee: int, actor: str) -> None:
    from chain.ingest import chain_alert_raise

    chain_alert_raise(
        chain_id=row.chain_id,
        kind=f"settlement_fee_cap:{row.pk}",
        message=f"settlement {row} needs a fee of {wanted} wei/gas (base fee {base_fee}), above "
        f"CHAIN_MAX_FEE_PER_GAS_WEI={settings.CHAIN_MAX_FEE_PER_GAS_WEI}: sent at the cap",
        details={"wanted": wanted, "base_fee": base_fee, "tx_hash": row.tx_hash},
        actor=actor,
        order_id=getattr(row, "order_id", None),
    )


def settlement_resubmit(
    *, kind: str, vault_id: int, actor: str = "settlement_resubmit"
) -> SettlementState:
    """Try a REVERTED settlement again (the vault was short of USDT, gas ran out, ...).

    Under the row lock: the call is estimated first; if the vault now reports the id done
    ("already settled") the row becomes CONFIRMED; if it would still revert (a mismatch, an
    unknown id, a reserve still short), the row stays REVERTED and nothing is sent (the
    caller alerts and tries later): a refused settlement is never resent blindly. Otherwise
    it is signed again, alone (a batched id leaves its batch), with a fresh nonce and sent,
    and `settlement_check` follows that attempt. Returns the state after the attempt. Safe to
    call repeatedly and concurrently.
    """
    client = chain_client()
    with transaction.atomic():
        row = SettlementTx.objects.select_for_update().get(
            chain_id=settings.CHAIN_ID, kind=kind, onchain_id=vault_id
        )
        if row.status != SettlementStatus.REVERTED:
            return (
                SettlementState(row.status)
                if row.status == SettlementStatus.CONFIRMED
                else SettlementState.PENDING
            )
        fn, args = request_of_row(row).vault_call()
        try:
            client.estimate_gas(
                contract="BroncoVault",
                address=contract_set().vault,
                fn=fn,
                args=args,
                sender=row.sender,
            )
        except ContractReverted as exc:
            before = _audit_view(row)
            if exc.error_name == _ALREADY_DONE[SettlementKind(row.kind)]:
                row.status = SettlementStatus.CONFIRMED
                row.already_settled = True
                row.confirmed_at = timezone.now()
                row.save()
                audit_record(
                    actor=actor,
                    action="chain.settlement_already_settled",
                    order_id=row.order_id,
                    before=before,
                    after=_audit_view(row),
                )
                return SettlementState.CONFIRMED
            row.last_error = f"still reverts: {exc.error_name or exc}"[:2000]
            row.save(update_fields=["last_error", "updated_at"])
            return SettlementState.REVERTED
        latest = row.attempts.order_by("-id").first()
        if latest is None and row.batch_id is not None:
            latest = SettlementAttempt.objects.filter(batch_id=row.batch_id).order_by("-id").first()
        row.batch = None
        row.status = SettlementStatus.SIGNED
        _resign(client=client, row=row, latest=latest, new_nonce=True, actor=actor)
    return SettlementState.PENDING


def settlements_submit_batch(
    *, requests: Sequence[DepositSettlement | RedeemSettlement], actor: str
) -> list[SettlementTx]:
    """Settle many deposits and redeems in batched transactions of at most
    CHAIN_SETTLEMENT_BATCH_MAX ids (settleDeposits, settleRedeems, or settleBatch when a
    transaction carries both kinds: deposits first, then redeems), each id's SettlementTx
    linked to its SettlementBatch (so `settlement_check` per id follows the batch).

    Idempotent per id, as `settlement_submit`: an id already submitted is returned as it
    stands (ValueError when asked with other amounts) and not sent again; an id the vault
    already reports settled is recorded CONFIRMED with `already_settled`, not sent. The batch
    is estimated before anything is signed: when the vault would refuse it (any element
    mismatched or invalid) SettlementRejected is raised and nothing of that chunk is
    recorded. Broadcast after the caller's transaction commits. Returns the rows in the
    order of `requests`.
    """
    kinds = {request.kind for request in requests}
    if kinds - set(BATCH_CALLS):
        raise ValueError(f"a batch settles deposits and redeems only: {kinds}")
    if not requests:
        return []
    chain_id = settings.CHAIN_ID
    by_id: dict[tuple[str, int], SettlementTx] = {}
    fresh: dict[tuple[str, int], DepositSettlement | RedeemSettlement] = {}
    recorded = {
        (row.kind, int(row.onchain_id)): row
        for row in SettlementTx.objects.filter(
            chain_id=chain_id, kind__in=kinds, onchain_id__in=[r.vault_id for r in requests]
        )
    }
    for request in requests:
        key = (request.kind, request.vault_id)
        existing = recorded.get(key)
        if existing is not None:
            _check_same(existing, request)
            by_id[key] = existing
        else:
            fresh.setdefault(key, request)
    if fresh:
        # Deposits first, then redeems: settleBatch's order, so a mixed batch's rows in id
        # order are its call's elements in order.
        fresh_in_order = sorted(fresh.values(), key=lambda r: list(BATCH_CALLS).index(r.kind))
        groups = [fresh_in_order]
        if len({r.kind for r in fresh_in_order}) > 1 and not vault_settles_mixed():
            groups = [[r for r in fresh_in_order if r.kind == kind] for kind in BATCH_CALLS]
        key = _operator_key()
        sender = address_of_key(key)
        size = max(1, settings.CHAIN_SETTLEMENT_BATCH_MAX)
        for group in groups:
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                by_id.update(_batch_submit_chunk(chunk=chunk, key=key, sender=sender, actor=actor))
    return [by_id[(request.kind, request.vault_id)] for request in requests]


# Whether the vault at (chain id, address) has settleBatch, asked once per process.
_mixed_by_vault: dict[tuple[int, str], bool] = {}


def vault_settles_mixed(*, vault: str | None = None) -> bool:
    """Whether the vault (default: the deployed one) has settleBatch (deposits and redeems
    in one transaction): its runtime code's function dispatcher holds the selector (solc:
    PUSH4 <selector>). A vault deployed before settleBatch existed has not: its batches go
    one kind each, as before, with a warning. One eth_getCode per process and vault; raises
    what the node client raises when it cannot answer."""
    chain_id, vault = settings.CHAIN_ID, vault or contract_set().vault
    known = _mixed_by_vault.get((chain_id, vault))
    if known is None:
        client = chain_client()
        selector = client.prepare(
            contract="BroncoVault", address=vault, fn=MIXED_BATCH_CALL, args=([], [])
        ).data[:10]
        known = b"\x63" + bytes.fromhex(selector[2:]) in client.code_at(vault)
        if not known:
            logger.warning(
                "the vault %s has no %s: deposits and redeems settle in separate batches "
                "(deploy the current BroncoVault to send them together)",
                vault,
                MIXED_BATCH_CALL,
            )
        _mixed_by_vault[(chain_id, vault)] = known
    return known


def _batch_submit_chunk(
    *,
    chunk: list[DepositSettlement | RedeemSettlement],
    key: str,
    sender: str,
    actor: str,
) -> dict[tuple[str, int], SettlementTx]:
    chain_id = settings.CHAIN_ID
    client = chain_client()
    vault = contract_set().vault
    kinds = {request.kind for request in chunk}
    batch_kind = BatchKind(kinds.pop()) if len(kinds) == 1 else BatchKind.MIXED
    out: dict[tuple[str, int], SettlementTx] = {}
    # No per-id "already settled?" read first (one eth_call per id was most of a batch's
    # cost): the vault skips a settled id with SettlementSkipped, so it is never paid twice,
    # and the confirmation records such an id as already settled (`_batch_skipped`).
    to_send = list(chunk)
    fn, args = batch_call(to_send)
    # Encoded once, before the nonce lock: signing under it is then only the signature.
    call = client.prepare(contract="BroncoVault", address=vault, fn=fn, args=args)
    try:
        gas = client.estimate_call_gas(call, sender=sender)
    except ContractReverted as exc:
        raise SettlementRejected(
            f"{fn}({[r.vault_id for r in to_send]}): {exc.error_name or exc} {exc.error_args}",
            error_name=exc.error_name or "",
        ) from exc
    gas_limit = gas * settings.CHAIN_GAS_LIMIT_PERCENT // 100
    if gas_limit > settings.CHAIN_TX_GAS_CAP and len(chunk) > 1:
        # Above what one transaction may use (EIP-7825): two halves, each estimated anew.
        half = len(chunk) // 2
        for part in (chunk[:half], chunk[half:]):
            out.update(_batch_submit_chunk(chunk=part, key=key, sender=sender, actor=actor))
        return out
    fees = client.fee_quote(min_priority_fee=settings.CHAIN_MIN_PRIORITY_FEE_WEI)
    tip = fees.max_priority_fee_per_gas
    max_fee = min(2 * fees.base_fee_per_gas + tip, settings.CHAIN_MAX_FEE_PER_GAS_WEI)
    with transaction.atomic():
        nonce = nonce_allocate(client=client, chain_id=chain_id, address=sender)
        signed = client.sign_call(
            private_key=key,
            call=call,
            nonce=nonce,
            gas_limit=gas_limit,
            max_fee_per_gas=max_fee,
            max_priority_fee_per_gas=min(tip, max_fee),
            chain_id=chain_id,
        )
        try:
            with transaction.atomic():
                batch = SettlementBatch.objects.create(
                    chain_id=chain_id,
                    kind=batch_kind,
                    sender=sender,
                    nonce=nonce,
                    tx_hash=signed.tx_hash,
                    status=SettlementStatus.SIGNED,
                )
                # One INSERT for the batch's rows (PostgreSQL returns their ids).
                rows = SettlementTx.objects.bulk_create(
                    [
                        SettlementTx(
                            chain_id=chain_id,
                            kind=request.kind,
                            **_row_values(request),
                            order_id=request.order_id,
                            sender=sender,
                            batch=batch,
                            tx_hash=signed.tx_hash,
                            status=SettlementStatus.SIGNED,
                        )
                        for request in to_send
                    ]
                )
        except IntegrityError:
            # Another submitter recorded one of these ids first: nothing of this chunk is
            # kept (the nonce neither); each id goes alone, which returns what exists.
            transaction.set_rollback(True)
            rows = None
        else:
            _attempt_create(batch, signed)
            _audit_carrier(batch, actor=actor, action="chain.settlement_signed")
            batch_pk, raw = batch.pk, signed.raw
            transaction.on_commit(lambda: _broadcast(pk=batch_pk, raw=raw, actor=actor, batch=True))
    if rows is None:
        for request in to_send:
            out[(request.kind, request.vault_id)] = settlement_submit(request=request, actor=actor)
        return out
    # As inserted: broadcasting happens after the caller's commit, so nothing moved them.
    for row in rows:
        out[(row.kind, int(row.onchain_id))] = row
    return out


# --- the SettlementSender the orders and refunds apps call (chain.settlement) -------------


def _settlement_view(row: SettlementTx) -> Settlement:
    state = (
        SettlementState(row.status)
        if row.status in (SettlementStatus.CONFIRMED, SettlementStatus.REVERTED)
        else SettlementState.PENDING
    )
    return Settlement(
        kind=SettlementKind(row.kind),
        vault_id=int(row.onchain_id),
        tx_hash=row.tx_hash,
        state=state,
        already_settled=row.already_settled,
    )


class ChainSettlementSender:
    """The real `chain.settlement.SettlementSender`: the services above, on the vault."""

    def submit(self, request: SettlementRequest, *, actor: str) -> Settlement:
        return _settlement_view(settlement_submit(request=request, actor=actor))

    def submit_batch(
        self, requests: Sequence[DepositSettlement | RedeemSettlement], *, actor: str
    ) -> list[Settlement]:
        rows = settlements_submit_batch(requests=requests, actor=actor)
        return [_settlement_view(row) for row in rows]

    def check(self, *, kind: str, vault_id: int, actor: str) -> SettlementState:
        return settlement_check(kind=kind, vault_id=vault_id, actor=actor)

    def check_many(
        self, *, kind: str, vault_ids: Sequence[int], actor: str
    ) -> dict[int, Settlement]:
        rows = settlements_check_many(kind=kind, vault_ids=vault_ids, actor=actor)
        return {int(row.onchain_id): _settlement_view(row) for row in rows}

    def resubmit(self, *, kind: str, vault_id: int, actor: str) -> SettlementState:
        return settlement_resubmit(kind=kind, vault_id=vault_id, actor=actor)

    def settlement(self, *, kind: str, vault_id: int) -> Settlement | None:
        row = selectors.settlement_get(kind=kind, onchain_id=vault_id)
        return None if row is None else _settlement_view(row)

    def reserve_usdt_units(self) -> int:
        return selectors.vault_usdt_balance()
