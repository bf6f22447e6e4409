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
from dataclasses import replace
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from chain import selectors
from chain.client import ChainClient, Receipt, SignedTx, address_of_key, chain_client
from chain.deployment import contract_set
from chain.exceptions import (
    ChainUnavailable,
    ContractReverted,
    NotConfigured,
    SettlementRejected,
    TransactionRejected,
)
from chain.models import (
    NonceSequence,
    SettlementAttempt,
    SettlementKind,
    SettlementStatus,
    SettlementTx,
)
from chain.settlement import (
    DepositSettlement,
    RedeemSettlement,
    RefundPayment,
    Settlement,
    SettlementRequest,
    SettlementState,
)
from core.audit import audit_record
from core.secrets import SecretUnavailable, get_secret

logger = logging.getLogger(__name__)


def _operator_key() -> str:
    """The operator's signing key: from Vault when VAULT_ADDR is set (production always),
    else from CHAIN_OPERATOR_PRIVATE_KEY. Never logged (the log filter redacts it too)."""
    try:
        return get_secret("operator_private_key")
    except SecretUnavailable as exc:
        raise NotConfigured(str(exc)) from None


# The revert that means "an earlier attempt already did this", per kind.
_ALREADY_DONE = {
    SettlementKind.DEPOSIT: "AlreadySettled",
    SettlementKind.REDEEM: "AlreadySettled",
    SettlementKind.REFUND: "RefundIdUsed",
}


def _row_values(request: SettlementRequest) -> dict[str, int | None]:
    """How a request is stored on its SettlementTx (columns shared by every kind)."""
    match request:
        case DepositSettlement():
            usdt, tokens, deposit_id = request.refund_usdt_units, request.mint_token_units, None
        case RedeemSettlement():
            usdt, tokens, deposit_id = request.payout_usdt_units, request.return_token_units, None
        case RefundPayment():
            usdt, tokens, deposit_id = request.refund_usdt_units, 0, request.deposit_id
    return {
        "onchain_id": request.vault_id,
        "deposit_id": deposit_id,
        "usdt_amount": usdt,
        "token_amount": tokens,
    }


def request_of_row(row: SettlementTx) -> SettlementRequest:
    """The request a SettlementTx was made for (to sign it again)."""
    vault_id, usdt, tokens = int(row.onchain_id), int(row.usdt_amount), int(row.token_amount)
    order_id = row.order_id
    if row.kind == SettlementKind.DEPOSIT:
        return DepositSettlement(
            deposit_id=vault_id, mint_token_units=tokens, refund_usdt_units=usdt, order_id=order_id
        )
    if row.kind == SettlementKind.REDEEM:
        return RedeemSettlement(
            redeem_id=vault_id, payout_usdt_units=usdt, return_token_units=tokens, order_id=order_id
        )
    if row.kind == SettlementKind.REFUND and row.deposit_id is not None:
        return RefundPayment(
            refund_id=vault_id,
            deposit_id=int(row.deposit_id),
            refund_usdt_units=usdt,
            order_id=order_id,
        )
    raise ValueError(f"settlement {row.pk}: unknown kind {row.kind!r}")


def _bumped(value: int) -> int:
    return -(-value * (100 + settings.CHAIN_FEE_BUMP_PERCENT) // 100)


def nonce_allocate(*, client: ChainClient, chain_id: int, address: str) -> int:
    """The next nonce of `address`, under the NonceSequence row lock. Must run inside the
    transaction that records what the nonce is used for, so it is consumed only if that
    commits. Never below the node's pending count (a key also used elsewhere stays in step)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("nonce_allocate must run inside a transaction")
    try:
        with transaction.atomic():
            NonceSequence.objects.get_or_create(
                chain_id=chain_id,
                address=address,
                defaults={"next_nonce": client.pending_nonce(address)},
            )
    except IntegrityError:
        pass  # another worker created the row first; we lock it below
    seq = NonceSequence.objects.select_for_update().get(chain_id=chain_id, address=address)
    nonce = max(seq.next_nonce, client.pending_nonce(address))
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
    try:
        gas = client.estimate_gas(
            contract="BroncoVault", address=vault, fn=fn, args=args, sender=sender
        )
    except ContractReverted as exc:
        if exc.error_name != _ALREADY_DONE[SettlementKind(kind)]:
            raise SettlementRejected(f"{fn}({vault_id}): {exc.error_name or exc}") from exc
        return _record_already_settled(base=base, actor=actor)

    fees = client.fee_quote(min_priority_fee=settings.CHAIN_MIN_PRIORITY_FEE_WEI)
    tip = fees.max_priority_fee_per_gas
    max_fee = min(2 * fees.base_fee_per_gas + tip, settings.CHAIN_MAX_FEE_PER_GAS_WEI)
    with transaction.atomic():
        nonce = nonce_allocate(client=client, chain_id=chain_id, address=sender)
        signed = client.sign(
            private_key=key,
            contract="BroncoVault",
            address=vault,
            fn=fn,
            args=args,
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


def _attempt_create(row: SettlementTx, signed: SignedTx) -> SettlementAttempt:
    return SettlementAttempt.objects.create(
        settlement=row,
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


def _broadcast(*, pk: int, raw: str, actor: str) -> None:
    """Send a committed attempt. Failure leaves the row for settlement_check to retry."""
    client = chain_client()
    try:
        tx_hash = client.send_raw(raw)
    except (ChainUnavailable, TransactionRejected) as exc:
        SettlementTx.objects.filter(pk=pk).update(last_error=str(exc)[:2000])
        logger.warning("settlement %s broadcast failed: %s", pk, exc)
        return
    updated = SettlementTx.objects.filter(pk=pk, status=SettlementStatus.SIGNED).update(
        status=SettlementStatus.SENT, sent_at=timezone.now(), updated_at=timezone.now()
    )
    if updated:
        row = SettlementTx.objects.get(pk=pk)
        audit_record(
            actor=actor,
            action="chain.settlement_sent",
            order_id=row.order_id,
            after=_audit_view(row),
        )
        logger.info("settlement sent %s", tx_hash, extra={"order_id": row.order_id})


def settlement_check(
    *, kind: str, vault_id: int, actor: str = "settlement_check"
) -> SettlementState:
    """Where the settlement of (kind, vault id) stands, moving its record along.

    CONFIRMED once a receipt of any of its attempts has the configured confirmations and
    succeeded, or reverted while the vault reports the id settled (an earlier attempt won).
    REVERTED when it reverted and the id is still unsettled (the caller decides what next).
    PENDING otherwise; on the way it re-broadcasts an attempt the node does not know, and
    replaces one waiting longer than CHAIN_SETTLEMENT_STUCK_SECONDS with the same nonce and a
    higher fee. Holds the SettlementTx row lock throughout, so concurrent checks do not
    replace twice. Raises SettlementTx.DoesNotExist when nothing was submitted.
    """
    chain_id = settings.CHAIN_ID
    row = SettlementTx.objects.get(chain_id=chain_id, kind=kind, onchain_id=vault_id)
    if row.status in (SettlementStatus.CONFIRMED, SettlementStatus.REVERTED):
        return SettlementState(row.status)
    client = chain_client()
    with transaction.atomic():
        row = SettlementTx.objects.select_for_update().get(pk=row.pk)
        if row.status in (SettlementStatus.CONFIRMED, SettlementStatus.REVERTED):
            return SettlementState(row.status)
        # Only the current nonce's attempts count: a resubmission after a revert takes a
        # fresh nonce, and the reverted attempt's receipt must not be judged again.
        attempts = list(row.attempts.filter(nonce=row.nonce).order_by("-id"))
        receipt = None
        for attempt in attempts:
            receipt = client.receipt(attempt.tx_hash)
            if receipt is not None:
                break
        if receipt is not None:
            return _judge_receipt(client=client, row=row, receipt=receipt, actor=actor)
        if not attempts:
            return SettlementState.PENDING
        latest = attempts[0]
        if not client.transaction_known(latest.tx_hash):
            _rebroadcast(client=client, row=row, attempt=latest, actor=actor)
        elif _waited_too_long(row, latest):
            _replace(client=client, row=row, latest=latest, actor=actor)
    return SettlementState.PENDING


def _waited_too_long(row: SettlementTx, latest: SettlementAttempt) -> bool:
    since = latest.created_at
    return timezone.now() - since >= timedelta(seconds=settings.CHAIN_SETTLEMENT_STUCK_SECONDS)


def _judge_receipt(
    *, client: ChainClient, row: SettlementTx, receipt: Receipt, actor: str
) -> SettlementState:
    confirmations = client.block_number() - receipt.block_number + 1
    row.tx_hash = receipt.tx_hash
    row.block_number = receipt.block_number
    if confirmations < settings.CHAIN_SETTLEMENT_CONFIRMATIONS:
        row.save(update_fields=["tx_hash", "block_number", "updated_at"])
        return SettlementState.PENDING
    before = _audit_view(row)
    if receipt.succeeded:
        row.status = SettlementStatus.CONFIRMED
        action = "chain.settlement_confirmed"
    elif selectors.is_settled(kind=row.kind, onchain_id=int(row.onchain_id)):
        row.status = SettlementStatus.CONFIRMED
        row.already_settled = True
        action = "chain.settlement_already_settled"
    else:
        row.status = SettlementStatus.REVERTED
        row.last_error = f"reverted in block {receipt.block_number}"
        action = "chain.settlement_reverted"
    row.confirmed_at = timezone.now()
    row.save()
    audit_record(
        actor=actor,
        action=action,
        order_id=row.order_id,
        before=before,
        after=_audit_view(row) | {"block_number": receipt.block_number},
    )
    log = logger.info if row.status == SettlementStatus.CONFIRMED else logger.error
    log(
        "settlement %s %s %s",
        row.kind,
        row.onchain_id,
        row.status,
        extra={"order_id": row.order_id},
    )
    return SettlementState(row.status)


def _rebroadcast(
    *, client: ChainClient, row: SettlementTx, attempt: SettlementAttempt, actor: str
) -> None:
    try:
        client.send_raw(attempt.raw_tx)
    except TransactionRejected as exc:
        if "nonce too low" not in str(exc).lower():
            row.last_error = str(exc)[:2000]
            row.save(update_fields=["last_error", "updated_at"])
            return
        # The nonce went to a transaction that is not ours: take a new one.
        _resign(client=client, row=row, latest=attempt, new_nonce=True, actor=actor)
        return
    if row.status == SettlementStatus.SIGNED:
        row.status = SettlementStatus.SENT
    row.sent_at = timezone.now()
    row.save(update_fields=["status", "sent_at", "updated_at"])
    audit_record(
        actor=actor, action="chain.settlement_sent", order_id=row.order_id, after=_audit_view(row)
    )


def _replace(
    *, client: ChainClient, row: SettlementTx, latest: SettlementAttempt, actor: str
) -> None:
    _resign(client=client, row=row, latest=latest, new_nonce=False, actor=actor)


def _resign(
    *,
    client: ChainClient,
    row: SettlementTx,
    latest: SettlementAttempt,
    new_nonce: bool,
    actor: str,
) -> None:
    """Sign again with a higher fee: the same nonce (a replacement), or a fresh one."""
    fees = client.fee_quote(min_priority_fee=settings.CHAIN_MIN_PRIORITY_FEE_WEI)
    tip = max(_bumped(int(latest.max_priority_fee_per_gas)), fees.max_priority_fee_per_gas)
    max_fee = max(_bumped(int(latest.max_fee_per_gas)), 2 * fees.base_fee_per_gas + tip)
    if max_fee > settings.CHAIN_MAX_FEE_PER_GAS_WEI:
        if int(latest.max_fee_per_gas) >= settings.CHAIN_MAX_FEE_PER_GAS_WEI:
            logger.error(
                "settlement %s stuck at the fee cap", row.pk, extra={"order_id": row.order_id}
            )
            return
        max_fee = settings.CHAIN_MAX_FEE_PER_GAS_WEI
    fn, args = request_of_row(row).vault_call()
    nonce = (
        nonce_allocate(client=client, chain_id=row.chain_id, address=row.sender)
        if new_nonce
        else latest.nonce
    )
    signed = client.sign(
        private_key=_operator_key(),
        contract="BroncoVault",
        address=contract_set().vault,
        fn=fn,
        args=args,
        nonce=nonce,
        gas_limit=latest.gas_limit,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=min(tip, max_fee),
        chain_id=row.chain_id,
    )
    before = _audit_view(row)
    _attempt_create(row, signed)
    row.nonce = nonce
    row.tx_hash = signed.tx_hash
    try:
        client.send_raw(signed.raw)
    except (TransactionRejected, ChainUnavailable) as exc:
        row.last_error = str(exc)[:2000]
        logger.warning("settlement %s replacement not accepted: %s", row.pk, exc)
    else:
        row.status = SettlementStatus.SENT
        row.sent_at = timezone.now()
    row.save()
    audit_record(
        actor=actor,
        action="chain.settlement_replaced",
        order_id=row.order_id,
        before=before,
        after=_audit_view(row) | {"max_fee_per_gas": max_fee, "new_nonce": new_nonce},
    )


def settlement_resubmit(
    *, kind: str, vault_id: int, actor: str = "settlement_resubmit"
) -> SettlementState:
    """Try a REVERTED settlement again (the vault was short of USDT, gas ran out, ...).

    Under the row lock: the call is estimated first; if the vault now reports the id done
    ("already settled") the row becomes CONFIRMED; if it would still revert, the row stays
    REVERTED and nothing is sent (the caller alerts and tries later); otherwise it is signed
    again with a fresh nonce and sent, and `settlement_check` follows that attempt. Returns
    the state after the attempt. Safe to call repeatedly and concurrently.
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
        row.status = SettlementStatus.SIGNED
        _resign(client=client, row=row, latest=latest, new_nonce=True, actor=actor)
    return SettlementState.PENDING


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

    def check(self, *, kind: str, vault_id: int, actor: str) -> SettlementState:
        return settlement_check(kind=kind, vault_id=vault_id, actor=actor)

    def resubmit(self, *, kind: str, vault_id: int, actor: str) -> SettlementState:
        return settlement_resubmit(kind=kind, vault_id=vault_id, actor=actor)

    def settlement(self, *, kind: str, vault_id: int) -> Settlement | None:
        row = selectors.settlement_get(kind=kind, onchain_id=vault_id)
        return None if row is None else _settlement_view(row)

    def reserve_usdt_units(self) -> int:
        return selectors.vault_usdt_balance()
