"""Celery doors of the chain app (queue `chain`). Thin: each loads ids and calls a service."""

from django.conf import settings
from django.utils import timezone

from chain.exceptions import ChainUnavailable
from chain.healing import nonce_heal
from chain.healing import settlements_heal as settlements_heal_service
from chain.models import SettlementStatus, SettlementTx
from chain.services import settlement_check
from core.tasks import QUEUE_CHAIN, TRANSIENT_ERRORS, bronco_task


@bronco_task(
    name="chain.tasks.settlements_sweep",
    queue=QUEUE_CHAIN,
    autoretry_for=(ChainUnavailable, *TRANSIENT_ERRORS),
    max_retries=5,
    soft_time_limit=120,
    time_limit=150,
    # A late sweep is worthless once the next one is due.
    expires=120,
)
def settlements_sweep() -> int:
    """Beat: heal a nonce gap (chain.healing.nonce_heal), then check every settlement still
    open (re-broadcast lost ones, replace stuck ones). Safe to run twice: settlement_check
    holds each row's lock, the nonce sequence is rebuilt under its own."""
    nonce_heal(actor="chain.settlements_sweep")
    cutoff = timezone.now() - timezone.timedelta(seconds=5)
    open_rows = SettlementTx.objects.filter(
        chain_id=settings.CHAIN_ID,
        status__in=[SettlementStatus.SIGNED, SettlementStatus.SENT],
        created_at__lt=cutoff,
    ).values_list("kind", "onchain_id")[:500]
    for kind, vault_id in open_rows:
        settlement_check(kind=kind, vault_id=int(vault_id), actor="chain.settlements_sweep")
    return len(open_rows)


@bronco_task(
    name="chain.tasks.settlements_heal",
    queue=QUEUE_CHAIN,
    autoretry_for=(ChainUnavailable, *TRANSIENT_ERRORS),
    max_retries=10,
    soft_time_limit=120,
    time_limit=150,
)
def settlements_heal(*, from_block: int) -> int:
    """After a reorg (the listener enqueues it): re-check the settlements confirmed from
    `from_block` on, reopen the vanished ones, heal the nonce sequence. Idempotent."""
    return settlements_heal_service(from_block=from_block, actor="chain.settlements_heal")
