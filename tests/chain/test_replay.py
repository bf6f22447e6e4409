"""Replay: `listen_chain --replay FROM:TO` acts on logs of a range the checkpoint passed
without a record, idempotently; a quarantined log is re-processed from the admin after a fix,
audited with the operator's name."""

import pytest
from django.core.management import call_command

from chain.listener import ChainListener
from chain.models import ChainCursor, ChainEvent, QuarantinedLog
from core.models import AuditLog
from orders.models import Order
from tests.fixtures.chain import listener_config, point_settings_at

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]


def test_replay_fills_a_missed_range_once_and_leaves_the_checkpoint(
    anvil, deployed_contracts, chain_user, settings, capsys
):
    point_settings_at(settings, anvil, deployed_contracts)
    user = chain_user(5)
    user.approve()
    first = anvil.client().block_number() + 1
    txs = [user.deposit("AAPL", 2 * 10**6 + i).tx_hash for i in range(3)]
    last = anvil.client().block_number()
    # a listener that started after them: the range was never read
    config = listener_config(anvil, deployed_contracts, start_block=last + 1)
    listener = ChainListener(config)
    anvil.client().rpc("anvil_mine", ["0x2"])
    listener.catch_up(anvil.client().block_number())
    checkpoint = ChainCursor.objects.get(address=deployed_contracts.vault).block_number
    assert not ChainEvent.objects.filter(tx_hash__in=txs).exists()

    stats = ChainListener(config).replay(first, last)
    assert stats.committed == 3
    assert ChainEvent.objects.filter(tx_hash__in=txs).count() == 3
    assert Order.objects.filter(chain_tx_hash__in=txs).count() == 3

    settings.CHAIN_START_BLOCK = last + 1
    call_command("listen_chain", "--replay", f"{first}:{last}")
    assert "0 new events, 3 already recorded" in capsys.readouterr().out
    assert ChainEvent.objects.filter(tx_hash__in=txs).count() == 3
    assert Order.objects.filter(chain_tx_hash__in=txs).count() == 3
    assert ChainCursor.objects.get(address=deployed_contracts.vault).block_number == checkpoint


def test_a_quarantined_log_is_reprocessed_from_the_admin_after_the_fix(
    anvil, deployed_contracts, chain_user, settings, admin_client
):
    point_settings_at(settings, anvil, deployed_contracts)
    user = chain_user(6)
    user.approve()
    deposit_block = anvil.client().block_number() + 1
    deposit_id = user.deposit_id(user.deposit("AAPL", 3 * 10**6))
    cancel = user.request_cancel(deposit_id)
    # the listener missed the deposit: the cancel names a deposit it does not know
    config = listener_config(anvil, deployed_contracts, start_block=deposit_block + 1)
    ChainListener(config).catch_up(anvil.client().block_number())
    quarantined = QuarantinedLog.objects.get(tx_hash=cancel.tx_hash)
    assert quarantined.reason == "cancel_for_unknown_deposit"

    # before the fix: re-processing fails and the log stays quarantined
    url = "/admin/chain/quarantinedlog/"
    admin_client.post(url, {"action": "reprocess", "_selected_action": [quarantined.pk]})
    quarantined.refresh_from_db()
    assert quarantined.resolved_at is None

    # the fix: replay the missed deposit; then re-process the cancel from the admin
    ChainListener(config).replay(deposit_block, deposit_block)
    admin_client.post(url, {"action": "reprocess", "_selected_action": [quarantined.pk]})
    quarantined.refresh_from_db()
    assert quarantined.resolved_at is not None
    assert ChainEvent.objects.filter(tx_hash=cancel.tx_hash, name="CancelRequested").count() == 1
    entry = AuditLog.objects.filter(action="chain.quarantine_reprocessed").get()
    assert entry.actor == "admin:admin"
    # a second click changes nothing
    admin_client.post(url, {"action": "reprocess", "_selected_action": [quarantined.pk]})
    assert ChainEvent.objects.filter(tx_hash=cancel.tx_hash).count() == 1
