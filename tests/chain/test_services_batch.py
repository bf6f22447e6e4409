"""The sender's batched settlement on a real anvil node: one transaction for many ids (bounded
by CHAIN_SETTLEMENT_BATCH_MAX), each id's SettlementTx linked to it so `check` per id works,
an id settled earlier skipped, a mismatched batch refused before anything is sent."""

from dataclasses import replace

import pytest

from chain import selectors
from chain.client import address_of_key
from chain.exceptions import SettlementRejected
from chain.models import SettlementBatch, SettlementStatus, SettlementTx
from chain.services import ChainSettlementSender, settlement_check, settlement_submit
from chain.settlement import SettlementState
from tests.fixtures.chain import DEPLOYER_KEY, OPERATOR_KEY, named_deposit, wait_for

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

UNIT, TOKEN = 10**6, 10**18


def confirmed(vault_id):
    return wait_for(
        lambda: settlement_check(kind="deposit", vault_id=vault_id) == SettlementState.CONFIRMED
    )


def test_a_batch_settles_many_ids_in_few_transactions_each_checked_per_id(
    own_chain, chain_user, settings
):
    node, contracts = own_chain
    settings.CHAIN_SETTLEMENT_BATCH_MAX = 4
    user = chain_user(2, node=node, contracts=contracts)
    ids = [user.deposit_id(user.deposit("AAPL", (5 + i) * UNIT)) for i in range(10)]
    requests = [
        replace(
            named_deposit(i, mint_token_units=TOKEN // 10, refund_usdt_units=UNIT),
            cycle_id=1,
            price_per_share_units=20 * UNIT,
            fee_units=UNIT // 1000,  # within the vault's schedule (0.1 % of 5 USDT and up)
        )
        for i in ids
    ]
    settlement_submit(
        request=replace(requests[0], cycle_id=None, price_per_share_units=None, fee_units=None),
        actor="test",
    )
    confirmed(ids[0])  # settled alone before the batch: recorded, not sent again
    sender = ChainSettlementSender()
    with pytest.raises(ValueError, match="other amounts"):
        sender.submit_batch(requests, actor="test")
    requests[0] = replace(requests[0], cycle_id=None, price_per_share_units=None, fee_units=None)
    views = sender.submit_batch(requests, actor="test")
    assert [v.vault_id for v in views] == ids
    for vault_id in ids:
        confirmed(vault_id)
        assert selectors.is_settled(kind="deposit", onchain_id=vault_id)
    assert SettlementBatch.objects.count() == 3  # 9 ids, at most 4 per transaction
    rows = SettlementTx.objects.filter(onchain_id__in=ids[1:])
    assert all(r.batch_id and r.status == SettlementStatus.CONFIRMED for r in rows)
    assert {r.tx_hash for r in rows} == set(
        SettlementBatch.objects.values_list("tx_hash", flat=True)
    )
    again = sender.submit_batch(requests, actor="test")  # idempotent: nothing new is sent
    assert again == [sender.settlement(kind="deposit", vault_id=i) for i in ids]
    assert SettlementBatch.objects.count() == 3


def test_a_batch_naming_another_deposit_is_refused_and_nothing_is_sent(
    own_chain, chain_user, settings
):
    node, contracts = own_chain
    user = chain_user(3, node=node, contracts=contracts)
    ids = [user.deposit_id(user.deposit("TSLA", 7 * UNIT)) for _ in range(3)]
    requests = [named_deposit(i, mint_token_units=1, refund_usdt_units=0) for i in ids]
    requests[1] = replace(requests[1], user=address_of_key(DEPLOYER_KEY))
    with pytest.raises(SettlementRejected, match="DepositMismatch"):
        ChainSettlementSender().submit_batch(requests, actor="test")
    assert not SettlementTx.objects.exists() and not SettlementBatch.objects.exists()


def test_an_id_settled_by_a_transaction_whose_record_was_lost_is_skipped_and_recorded(
    own_chain, chain_user
):
    """No per-id read before a batch: the vault skips an id it already settled
    (SettlementSkipped), the user is paid once, and the confirmation records the id as
    already settled by the transaction that did settle it."""
    node, contracts = own_chain
    user = chain_user(5, node=node, contracts=contracts)
    ids = [user.deposit_id(user.deposit("AAPL", 9 * UNIT)) for _ in range(3)]
    requests = [named_deposit(i, mint_token_units=0, refund_usdt_units=9 * UNIT) for i in ids]
    # Settled by the operator's key in a transaction Bronco has no record of.
    fn, args = requests[0].vault_call()
    settled_by = (
        node.client()
        .transact(
            private_key=OPERATOR_KEY,
            contract="BroncoVault",
            address=contracts.vault,
            fn=fn,
            args=args,
        )
        .tx_hash
    )
    assert selectors.is_settled(kind="deposit", onchain_id=ids[0])
    balance = selectors.usdt_balance(address=user.address)

    ChainSettlementSender().submit_batch(requests, actor="test")
    for vault_id in ids:
        confirmed(vault_id)
    (batch,) = SettlementBatch.objects.all()
    rows = {int(r.onchain_id): r for r in SettlementTx.objects.filter(onchain_id__in=ids)}
    assert rows[ids[0]].already_settled and rows[ids[0]].tx_hash == settled_by
    assert rows[ids[0]].status == SettlementStatus.CONFIRMED
    assert [rows[i].tx_hash for i in ids[1:]] == [batch.tx_hash] * 2
    assert not any(rows[i].already_settled for i in ids[1:])
    # Paid once: only the two ids the batch settled paid now.
    assert selectors.usdt_balance(address=user.address) == balance + 2 * 9 * UNIT
