"""The listener's batch creates its orders in one bulk step; one bad log in a batch is
quarantined alone and the rest still become exactly one order each."""

from unittest import mock

import pytest
from django.db import DataError

import orders.services
from chain.models import ChainEvent, QuarantinedLog
from core.audit import audit_verify
from core.models import AuditLog
from orders.models import Order
from tests.fixtures.chain import listener_config, wait_for

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]


def _deposits_before_listener(node, contracts, chain_user, n):
    """Deposits mined before the listener starts: its backfill takes them in one batch."""
    user = chain_user(2, node=node, contracts=contracts)
    user.approve()
    start = node.client().block_number() + 1
    receipts = [user.deposit("AAPL", (10 + i) * 10**6) for i in range(n)]
    return start, [(r, user.deposit_id(r)) for r in receipts]


def _insert_failing_on(bad_id):
    """The crash at an exact line: the database refuses deposit `bad_id`'s row, so its
    batch's bulk step fails and the listener takes the batch one log at a time."""
    real_insert = orders.services._insert_orders

    def insert_failing_on_bad(requests, actor, *rest):
        if any(int(r.onchain_id) == bad_id for r in requests):
            raise DataError("numeric field overflow (injected)")
        return real_insert(requests, actor, *rest)

    return mock.patch("orders.services._insert_orders", insert_failing_on_bad)


def test_a_backfilled_batch_becomes_one_order_per_deposit(own_chain, chain_user, run_listener):
    node, contracts = own_chain
    start, deposits = _deposits_before_listener(node, contracts, chain_user, 6)
    with run_listener(listener_config(node, contracts, start_block=start)):
        wait_for(lambda: Order.objects.count() == 6)
    for receipt, deposit_id in deposits:
        order = Order.objects.get(onchain_id=deposit_id, order_type="BUY")
        assert order.chain_tx_hash == receipt.tx_hash
        assert ChainEvent.objects.filter(tx_hash=receipt.tx_hash, order_id=order.pk).count() == 1
        assert AuditLog.objects.filter(order=order, action="order.created").count() == 1
    checked, broken = audit_verify()
    assert broken is None and checked >= 6


def test_one_bad_log_in_a_batch_is_quarantined_alone(own_chain, chain_user, run_listener):
    node, contracts = own_chain
    start, deposits = _deposits_before_listener(node, contracts, chain_user, 3)
    bad_receipt, bad_id = deposits[1]
    with _insert_failing_on(bad_id):
        with run_listener(listener_config(node, contracts, start_block=start)):
            wait_for(
                lambda: (
                    Order.objects.count() == 2
                    and QuarantinedLog.objects.filter(tx_hash=bad_receipt.tx_hash).exists()
                )
            )
    assert not Order.objects.filter(onchain_id=bad_id).exists()
    quarantined = QuarantinedLog.objects.get(tx_hash=bad_receipt.tx_hash)
    assert quarantined.reason == "rejected"
    assert "DataError" in quarantined.detail
    for receipt, deposit_id in (deposits[0], deposits[2]):
        assert Order.objects.filter(onchain_id=deposit_id).count() == 1
        assert ChainEvent.objects.filter(tx_hash=receipt.tx_hash).count() == 1
    assert audit_verify()[1] is None


def test_a_batch_taken_one_log_at_a_time_keeps_the_users_terms(own_chain, chain_user, run_listener):
    """The one-log fallback builds each order with the terms (price bound, expiry) its batch
    carries, as the bulk step does: before the fix its orders came out as market orders with
    Bronco's default expiry."""
    from chain.client import symbol_to_bytes32

    node, contracts = own_chain
    user = chain_user(2, node=node, contracts=contracts)
    user.approve()
    start = node.client().block_number() + 1
    head = node.client().rpc("eth_getBlockByNumber", ["latest", False])
    expiry = int(head["timestamp"], 16) + 3 * 24 * 3600
    terms = [(190 * 10**6, expiry), (0, expiry + 60), (150 * 10**6, 0)]
    ids = []
    for i, (bound, until) in enumerate(terms):
        receipt = user._send(
            "BroncoVault",
            contracts.vault,
            "deposit",
            symbol_to_bytes32("AAPL"),
            (10 + i) * 10**6,
            bound,
            until,
        )
        ids.append(user.deposit_id(receipt))
    with _insert_failing_on(ids[2]):
        with run_listener(listener_config(node, contracts, start_block=start)):
            wait_for(lambda: Order.objects.count() == 2)
    first = Order.objects.get(onchain_id=ids[0], order_type="BUY")
    second = Order.objects.get(onchain_id=ids[1], order_type="BUY")
    assert int(first.price_bound) == 190 * 10**6
    assert int(first.expires_at.timestamp()) == expiry
    assert int(second.price_bound) == 0
    assert int(second.expires_at.timestamp()) == expiry + 60


def test_a_batch_meeting_a_recorded_request_is_done_again_with_look_ups(
    own_chain, chain_user, caplog
):
    """The first try at a batch assumes nothing of it is recorded (no look-ups by id); a
    deposit already recorded live under its vault id (here the same log delivered again
    under another transaction hash, as a re-mined log is) makes the unique keys refuse
    it, and the batch is done again with the look-ups: it is counted as a duplicate, the
    new deposit beside it becomes one order, and nothing of the first try is kept."""
    import dataclasses

    from chain.ingest import chain_logs_commit, cursor_ensure

    node, contracts = own_chain
    start, deposits = _deposits_before_listener(node, contracts, chain_user, 2)
    client = node.client()
    logs = client.get_logs(
        from_block=start, to_block=client.block_number(), address=contracts.vault
    )
    (first, _), (second, _) = deposits
    first_logs = [log for log in logs if log.tx_hash == first.tx_hash]
    second_logs = [log for log in logs if log.tx_hash == second.tx_hash]
    cursor_ensure(chain_id=contracts.chain_id, address=contracts.vault, start_block=start)
    done = chain_logs_commit(
        chain_id=contracts.chain_id,
        vault=contracts.vault,
        logs=first_logs,
        to_block=first.block_number,
        to_block_hash=first.block_hash,
        head=first.block_number,
        actor="test",
    )
    assert done.committed == len(first_logs) and Order.objects.count() == 1
    audit_rows = AuditLog.objects.count()
    caplog.set_level("INFO", logger="chain.ingest")
    again = [
        dataclasses.replace(
            log,
            tx_hash="0x" + "ab" * 32,
            block_number=second.block_number,
            block_hash=second.block_hash,
        )
        for log in first_logs
    ]
    result = chain_logs_commit(
        chain_id=contracts.chain_id,
        vault=contracts.vault,
        logs=[*again, *second_logs],
        to_block=second.block_number,
        to_block_hash=second.block_hash,
        head=second.block_number,
        actor="test",
    )
    assert "again with look-ups" in caplog.text  # the first try was refused
    assert result.duplicates == len(again)
    assert result.committed == len(second_logs)
    assert Order.objects.count() == 2
    assert ChainEvent.objects.filter(tx_hash="0x" + "ab" * 32).count() == 0
    assert ChainEvent.objects.filter(removed_at__isnull=True).count() == len(logs)
    # the second deposit's order: its creation and booking entries, once each
    assert AuditLog.objects.count() == audit_rows + 2
    checked, broken = audit_verify()
    assert broken is None and checked == AuditLog.objects.count()
