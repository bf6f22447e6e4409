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


def test_replay_says_what_it_left_to_the_listener_and_refuses_bad_input_clearly(
    anvil, deployed_contracts, chain_user, settings, capsys
):
    from django.core.management.base import CommandError

    point_settings_at(settings, anvil, deployed_contracts)
    user = chain_user(7)
    user.approve()
    start = anvil.client().block_number() + 1
    user.deposit("AAPL", 2 * 10**6)
    settings.CHAIN_START_BLOCK = start
    config = listener_config(anvil, deployed_contracts, start_block=start)
    ChainListener(config).catch_up(anvil.client().block_number())
    checkpoint = ChainCursor.objects.get(address=deployed_contracts.vault).block_number
    head = anvil.client().block_number()

    # A range past the checkpoint (and past the head): read up to the checkpoint, the rest
    # named as the listener's, no traceback.
    call_command("listen_chain", "--replay", f"{start}:{head + 1000}")
    out = capsys.readouterr().out
    assert f"replayed blocks {start}..{checkpoint}" in out
    assert f"blocks {checkpoint + 1}..{head + 1000} are above the listener's checkpoint" in out

    with pytest.raises(CommandError, match="start at 0"):
        call_command("listen_chain", "--replay=-3:4")
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"  # nothing listens there
    with pytest.raises(CommandError):
        call_command("listen_chain", "--replay", f"{start}:{checkpoint}")


def test_listen_chain_without_a_vault_says_how_to_get_one(settings):
    from django.core.management.base import CommandError

    settings.CHAIN_VAULT_ADDRESS = ""
    with pytest.raises(CommandError, match="deploy_contracts"):
        call_command("listen_chain", "--replay", "1:2")


def test_reprocess_with_the_node_away_is_a_message_not_an_error_page(
    anvil, deployed_contracts, settings, admin_client
):
    point_settings_at(settings, anvil, deployed_contracts)
    row = QuarantinedLog.objects.create(
        chain_id=deployed_contracts.chain_id,
        tx_hash="0x" + "cd" * 32,
        log_index=0,
        block_number=1,
        block_hash="0x" + "ef" * 32,
        address=deployed_contracts.vault,
        reason="cancel_for_unknown_deposit",
    )
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"  # nothing listens there
    url = "/admin/chain/quarantinedlog/"
    response = admin_client.post(
        url, {"action": "reprocess", "_selected_action": [row.pk]}, follow=True
    )
    assert response.status_code == 200
    assert "the node could not be asked" in response.content.decode()
    row.refresh_from_db()
    assert row.resolved_at is None
