"""The settlement sender heals after a reorg: what Bronco had confirmed in replaced blocks is
checked again (and re-sent when it vanished), and a nonce sequence with a gap the chain will
never fill is rebuilt from the chain.

Money stays safe throughout because the vault settles each id at most once and checks that a
settlement names the request at its id: re-sending a vanished settlement (same request) pays
at most once, and one whose request vanished too is refused (alerted) rather than paid to
someone else.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from chain.client import ChainClient, chain_client
from chain.exceptions import ChainUnavailable, TransactionRejected
from chain.models import NonceSequence, SettlementBatch, SettlementStatus, SettlementTx
from chain.services import (
    _NONCE_TOO_LOW,
    Carrier,
    _carrier_view,
    _resign,
    _says,
    _sync_members,
)
from core.audit import audit_record

logger = logging.getLogger(__name__)


def _carriers(**filters: object) -> list[Carrier]:
    singles = SettlementTx.objects.filter(batch__isnull=True, nonce__isnull=False, **filters)
    batches = SettlementBatch.objects.filter(**filters)
    return [*singles, *batches]


def settlements_heal(*, from_block: int, actor: str = "chain.settlements_heal") -> int:
    """After a reorg that replaced blocks from `from_block` on: every settlement (or batch)
    Bronco recorded as mined there (CONFIRMED or REVERTED with a block number at or above it)
    is checked against the node. One whose transaction is still mined with the same outcome
    keeps its verdict (its block number follows the re-mined block). One whose transaction
    vanished, or was re-mined with the other outcome (transactions re-mined in another order:
    a settlement whose request is no longer at its id reverts; one that reverted may now pass),
    is reopened (SENT, audited): `settlement_check` (the settle stage, the sweep) judges the
    new receipt (a revert is alerted as any), or re-broadcasts the same signed transaction,
    or signs the same request with a fresh nonce when its nonce went to another. Then the
    nonce sequence is healed. Returns how many were reopened. Idempotent."""
    client = chain_client()
    reopened = 0
    for carrier in _carriers(
        chain_id=settings.CHAIN_ID,
        status__in=[SettlementStatus.CONFIRMED, SettlementStatus.REVERTED],
        block_number__gte=from_block,
    ):
        with transaction.atomic():
            locked = type(carrier).objects.select_for_update().get(pk=carrier.pk)
            if locked.block_number is None or locked.block_number < from_block:
                continue
            receipt = client.receipt(locked.tx_hash) if locked.tx_hash else None
            verdict_holds = receipt is not None and receipt.succeeded == (
                locked.status == SettlementStatus.CONFIRMED
            )
            if verdict_holds and receipt.block_number == locked.block_number:
                continue
            if verdict_holds:
                locked.block_number = receipt.block_number
                locked.save(update_fields=["block_number", "updated_at"])
                if isinstance(locked, SettlementBatch):
                    _sync_members(locked)
                continue
            # Vanished, or re-mined with the other outcome (the new order of transactions
            # gave a confirmed settlement a revert, or a reverted one success): reopened, so
            # settlement_check judges the receipt again, or sends it again when there is none.
            reason = (
                f"its transaction vanished in a reorg from block {from_block}"
                if receipt is None
                else f"re-mined in block {receipt.block_number} after a reorg from block "
                f"{from_block} with the other outcome (status {receipt.status})"
            )
            before = _carrier_view(locked)
            locked.status = SettlementStatus.SENT
            locked.block_number = None
            locked.confirmed_at = None
            locked.last_error = reason
            locked.save()
            if isinstance(locked, SettlementBatch):
                _sync_members(locked)
            rows = (
                list(locked.settlements.all()) if isinstance(locked, SettlementBatch) else [locked]
            )
            for row in rows:
                audit_record(
                    actor=actor,
                    action="chain.settlement_reopened",
                    order_id=row.order_id,
                    before=before,
                    after={
                        "kind": row.kind,
                        "onchain_id": int(row.onchain_id),
                        "reason": "reorg",
                        "detail": reason,
                    },
                )
            reopened += 1
            logger.warning("settlement %s reopened: %s", locked, reason)
    nonce_heal(actor=actor, client=client)
    return reopened


def _rebroadcast_waiting(client: ChainClient, carrier: Carrier, *, nonce: int) -> bool:
    """Send again the latest attempt of `carrier` at `nonce` unless the node has one of
    them. True when the nonce is taken care of: known to the node, accepted again, used
    already ("nonce too low": the sequence moves), or the node did not answer (the next
    heal asks again). False when the node refuses it for another reason (a fee below what
    it takes, a cap of its own): the caller rebuilds the sequence as for a gap, signing
    the same requests again."""
    attempts = list(carrier.attempts.filter(nonce=nonce).order_by("-id"))
    if not attempts:
        return False
    if any(client.transaction_known(a.tx_hash) for a in attempts):
        return True
    try:
        client.send_raw(attempts[0].raw_tx)
    except ChainUnavailable as exc:
        logger.warning("settlement %s at nonce %s not sent again: %s", carrier, nonce, exc)
        return True
    except TransactionRejected as exc:
        if _says(exc, _NONCE_TOO_LOW):
            return True
        logger.warning("settlement %s at nonce %s refused when sent again: %s", carrier, nonce, exc)
        return False
    logger.warning(
        "settlement %s waited at the node's next nonce %s unknown to the node: sent again",
        carrier,
        nonce,
    )
    return True


def nonce_heal(*, actor: str = "chain.nonce_heal", client: ChainClient | None = None) -> int:
    """Rebuild the operator's nonce sequence when it has a gap: the stored next nonce is above
    what the node will ever reach (`eth_getTransactionCount(pending)` is below it) and no
    settlement of ours holds the node's next nonce (one that does is broadcast again when
    the node does not know it, never re-signed with another nonce). The sequence is reset to the
    node's count and every open settlement (or batch) at or above it is signed again, same
    request, in nonce order, with fresh consecutive nonces. Returns how many were re-signed;
    0 when there is no gap."""
    client = client or chain_client()
    healed = 0
    for seq in NonceSequence.objects.filter(chain_id=settings.CHAIN_ID):
        pending = client.pending_nonce(seq.address)
        if seq.next_nonce <= pending:
            continue
        open_carriers = sorted(
            (
                c
                for c in _carriers(
                    chain_id=settings.CHAIN_ID,
                    sender=seq.address,
                    status__in=[SettlementStatus.SIGNED, SettlementStatus.SENT],
                    nonce__gte=pending,
                )
            ),
            key=lambda c: c.nonce,
        )
        waiting = [c for c in open_carriers if c.nonce == pending]
        if waiting:
            # A settlement of ours holds the node's next nonce: no gap the chain will never
            # fill. Its transaction may be on its way (broadcast after its commit: the
            # 10,000-order chaos run re-signed such a batch with a fresh nonce 0.4 s after
            # it was signed and both were mined) or dropped by the node: it is broadcast
            # again, the same signed transaction, and settlement_check replaces it with the
            # same nonce if the node refuses it. Never re-signed with another nonce.
            if _rebroadcast_waiting(client, waiting[0], nonce=pending):
                continue
        with transaction.atomic():
            locked = NonceSequence.objects.select_for_update().get(pk=seq.pk)
            before = locked.next_nonce
            locked.next_nonce = client.pending_nonce(seq.address)
            locked.save(update_fields=["next_nonce", "updated_at"])
            audit_record(
                actor=actor,
                action="chain.nonce_rebuilt",
                before={"address": seq.address, "next_nonce": before},
                after={"address": seq.address, "next_nonce": locked.next_nonce},
            )
        logger.error(
            "nonce gap for %s: stored next %s, node at %s; re-signing %s open settlements",
            seq.address,
            before,
            pending,
            len(open_carriers),
        )
        for carrier in open_carriers:
            with transaction.atomic():
                locked_carrier = type(carrier).objects.select_for_update().get(pk=carrier.pk)
                if locked_carrier.status not in (SettlementStatus.SIGNED, SettlementStatus.SENT):
                    continue
                latest = locked_carrier.attempts.order_by("-id").first()
                if latest is None:
                    continue
                _resign(
                    client=client, row=locked_carrier, latest=latest, new_nonce=True, actor=actor
                )
                healed += 1
    return healed
