"""The sender's batched settlement on a real anvil node: one transaction for many ids (bounded
by CHAIN_SETTLEMENT_BATCH_MAX), each id's SettlementTx linked to it so `check` per id works,
an id settled earlier skipped, a mismatched batch refused before anything is sent."""

from dataclasses import replace

import pytest
from django.conf import settings

from chain import selectors, services
from chain.client import address_of_key
from chain.exceptions import SettlementRejected
from chain.models import SettlementBatch, SettlementStatus, SettlementTx
from chain.services import (
    ChainSettlementSender,
    _vault_call_of,
    settlement_check,
    settlement_submit,
    vault_settles_mixed,
)
from chain.settlement import SettlementState
from tests.fixtures.chain import (
    DEPLOYER_KEY,
    OPERATOR_KEY,
    fund_vault,
    named_deposit,
    named_redeem,
    wait_for,
)

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

UNIT, TOKEN = 10**6, 10**18


def confirmed(vault_id):
    return wait_for(
        lambda: settlement_check(kind="deposit", vault_id=vault_id) == SettlementState.CONFIRMED
    )


def settle_unrecorded(node, contracts, request) -> str:
    """Settle `request` alone with the operator's key in a transaction Bronco has no record
    of (as one whose record was lost); returns its hash."""
    fn, args = request.vault_call()
    client = node.client()
    return client.transact(
        private_key=OPERATOR_KEY, contract="BroncoVault", address=contracts.vault, fn=fn, args=args
    ).tx_hash


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
    settled_by = settle_unrecorded(node, contracts, requests[0])
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


def test_deposits_and_redeems_settle_together_in_one_settle_batch_transaction(
    own_chain, chain_user, settings
):
    """A batch holding both kinds is one settleBatch transaction: each id settles once and
    is checked per id under its own kind; an id of either kind already settled is skipped
    (SettlementSkipped names its kind) and recorded as such, and the user is paid once."""
    node, contracts = own_chain
    settings.CHAIN_SETTLEMENT_BATCH_MAX = 10
    user = chain_user(4, node=node, contracts=contracts)
    minted = user.deposit_id(user.deposit("AAPL", 20 * UNIT))
    settlement_submit(
        request=named_deposit(minted, mint_token_units=TOKEN, refund_usdt_units=0), actor="t"
    )
    confirmed(minted)
    fund_vault(node, contracts, user, 50 * UNIT)
    deposits = [user.deposit_id(user.deposit("AAPL", 9 * UNIT)) for _ in range(2)]
    redeems = [user.redeem_id(user.redeem("AAPL", TOKEN // 4)) for _ in range(2)]
    first_redeem = named_redeem(redeems[0], payout_usdt_units=UNIT, return_token_units=0)
    settled_by = settle_unrecorded(node, contracts, first_redeem)
    balance = selectors.usdt_balance(address=user.address)
    requests = [
        named_redeem(redeems[1], payout_usdt_units=2 * UNIT, return_token_units=0),
        named_deposit(deposits[0], mint_token_units=0, refund_usdt_units=9 * UNIT),
        first_redeem,
        named_deposit(deposits[1], mint_token_units=0, refund_usdt_units=9 * UNIT),
    ]
    views = ChainSettlementSender().submit_batch(requests, actor="test")
    assert [(v.kind, v.vault_id) for v in views] == [(r.kind, r.vault_id) for r in requests]
    (batch,) = SettlementBatch.objects.all()
    assert batch.kind == "mixed"
    kinds = [(r.kind, r.vault_id) for r in requests]
    assert wait_for(
        lambda: all(
            settlement_check(kind=kind, vault_id=vault_id) == SettlementState.CONFIRMED
            for kind, vault_id in kinds
        )
    )
    batch.refresh_from_db()
    assert batch.status == SettlementStatus.CONFIRMED
    rows = {(r.kind, int(r.onchain_id)): r for r in SettlementTx.objects.filter(batch=batch)}
    assert sorted(rows) == sorted(kinds)
    skipped = rows[("redeem", redeems[0])]
    assert skipped.already_settled and skipped.tx_hash == settled_by
    assert not any(r.already_settled for key, r in rows.items() if key != ("redeem", redeems[0]))
    assert {r.tx_hash for key, r in rows.items() if r is not skipped} == {batch.tx_hash}
    for vault_id in deposits:
        assert selectors.is_settled(kind="deposit", onchain_id=vault_id)
    assert selectors.is_settled(kind="redeem", onchain_id=redeems[1])
    # Paid once: two refunds and one payout now, nothing again for the skipped redeem.
    assert selectors.usdt_balance(address=user.address) == balance + 2 * 9 * UNIT + 2 * UNIT


def _a_redeem_and_a_deposit(user):
    """`user` gets a token (a deposit settled first), then redeems half of it and deposits:
    (the first deposit's id, a settlement of the redeem returning it all, one of the deposit
    refunding it all)."""
    minted = user.deposit_id(user.deposit("TSLA", 30 * UNIT))
    settlement_submit(
        request=named_deposit(minted, mint_token_units=TOKEN, refund_usdt_units=0), actor="t"
    )
    confirmed(minted)
    redeem = user.redeem_id(user.redeem("TSLA", TOKEN // 2))
    deposit = user.deposit_id(user.deposit("TSLA", 8 * UNIT))
    return (
        minted,
        named_redeem(redeem, payout_usdt_units=0, return_token_units=TOKEN // 2),
        named_deposit(deposit, mint_token_units=0, refund_usdt_units=8 * UNIT),
    )


def test_a_mixed_batch_is_re_signed_with_the_calldata_it_was_sent_with(
    own_chain, chain_user, settings
):
    """A replacement or a re-sign rebuilds a batch's call from its rows in id order: for a
    mixed batch that is settleBatch(deposits, redeems) exactly as first sent."""
    node, contracts = own_chain
    minted, redeem, deposit = _a_redeem_and_a_deposit(chain_user(6, node=node, contracts=contracts))
    ChainSettlementSender().submit_batch([redeem, deposit], actor="test")
    (batch,) = SettlementBatch.objects.exclude(settlements__onchain_id=minted)
    fn, args = _vault_call_of(batch)
    assert fn == "settleBatch"
    client = node.client()
    sent = client.rpc("eth_getTransactionByHash", [batch.tx_hash])
    rebuilt = client.prepare(contract="BroncoVault", address=contracts.vault, fn=fn, args=args)
    assert sent["input"] == rebuilt.data


def test_a_vault_without_settle_batch_gets_one_batch_per_kind(own_chain, chain_user, monkeypatch):
    """Only a vault whose code has settleBatch is sent mixed batches; an older one (here
    the USDT contract stands in: it has no settleBatch) gets one batch per kind."""
    node, contracts = own_chain
    assert vault_settles_mixed() is True
    assert vault_settles_mixed(vault=contracts.usdt) is False
    minted, redeem, deposit = _a_redeem_and_a_deposit(chain_user(7, node=node, contracts=contracts))
    # As the check answers for a vault deployed before settleBatch existed.
    monkeypatch.setitem(services._mixed_by_vault, (settings.CHAIN_ID, contracts.vault), False)
    ChainSettlementSender().submit_batch([deposit, redeem], actor="test")
    kinds = SettlementBatch.objects.exclude(settlements__onchain_id=minted).values_list(
        "kind", flat=True
    )
    assert sorted(kinds) == ["deposit", "redeem"]
    assert wait_for(
        lambda: (
            settlement_check(kind="redeem", vault_id=redeem.vault_id) == SettlementState.CONFIRMED
        )
    )
    confirmed(deposit.vault_id)


def test_a_batch_above_one_transaction_s_gas_cap_is_sent_in_halves(own_chain, chain_user, settings):
    """CHAIN_TX_GAS_CAP (EIP-7825's 2^24 by default) bounds each transaction's gas limit: a
    chunk whose limit would pass it is halved until each part fits."""
    node, contracts = own_chain
    user = chain_user(8, node=node, contracts=contracts)
    ids = [user.deposit_id(user.deposit("NVDA", (5 + i) * UNIT)) for i in range(4)]
    requests = [named_deposit(i, mint_token_units=0, refund_usdt_units=UNIT) for i in ids]
    client = node.client()
    one = client.estimate_gas(
        contract="BroncoVault",
        address=contracts.vault,
        fn="settleDeposits",
        args=([requests[0].batch_element()],),
        sender=address_of_key(OPERATOR_KEY),
    )
    settings.CHAIN_TX_GAS_CAP = 2 * one * settings.CHAIN_GAS_LIMIT_PERCENT // 100
    ChainSettlementSender().submit_batch(requests, actor="test")
    batches = list(SettlementBatch.objects.all())
    assert len(batches) >= 2
    limits = [a.gas_limit for b in batches for a in b.attempts.all()]
    assert limits and max(limits) <= settings.CHAIN_TX_GAS_CAP
    for vault_id in ids:
        confirmed(vault_id)
