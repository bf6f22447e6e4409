"""The settlement sender against a real anvil node: nonces under concurrency, stuck
transactions replaced, repeated settlements recognised, idempotency."""

import threading
from dataclasses import replace

import pytest
from django.db import connection, transaction

from chain import selectors
from chain.client import address_of_key
from chain.exceptions import SettlementRejected
from chain.models import NonceSequence, SettlementAttempt, SettlementStatus, SettlementTx
from chain.services import nonce_allocate, settlement_check, settlement_submit
from chain.settlement import SettlementState
from core.models import AuditLog
from tests.fixtures.chain import OPERATOR_KEY, named_deposit, wait_for

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]


def deposits(user, n, amount=10**6):
    user.approve()
    return [user.deposit_id(user.deposit("AAPL", amount)) for _ in range(n)]


def check_until(kind, vault_id, state=SettlementState.CONFIRMED):
    return wait_for(lambda: settlement_check(kind=kind, vault_id=vault_id) == state)


def test_fifty_settlements_from_four_workers_take_fifty_consecutive_nonces(
    chain_settings, chain_user
):
    ids = deposits(chain_user(6), 50)
    errors = []

    def worker(chunk):
        try:
            for deposit_id in chunk:
                settlement_submit(
                    request=named_deposit(
                        deposit_id,
                        mint_token_units=10**15,
                        refund_usdt_units=10**5,
                        order_id=None,
                    ),
                    actor="test-worker",
                )
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(ids[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rows = list(SettlementTx.objects.filter(onchain_id__in=ids))
    nonces = sorted(r.nonce for r in rows)
    assert len(rows) == 50
    assert nonces == list(range(nonces[0], nonces[0] + 50))
    for deposit_id in ids:
        check_until("deposit", deposit_id)
        assert selectors.is_settled(kind="deposit", onchain_id=deposit_id)
    sender = address_of_key(OPERATOR_KEY)
    assert NonceSequence.objects.get(address=sender).next_nonce == nonces[-1] + 1
    assert AuditLog.objects.filter(action="chain.settlement_confirmed").count() == 50


def test_submit_is_idempotent_and_refuses_what_the_vault_would_refuse(chain_settings, chain_user):
    (deposit_id,) = deposits(chain_user(7), 1, amount=3 * 10**6)
    request = named_deposit(deposit_id, mint_token_units=5, refund_usdt_units=10**6)
    first = settlement_submit(request=request, actor="test")
    again = settlement_submit(request=request, actor="test")
    assert again.pk == first.pk and SettlementAttempt.objects.filter(settlement=first).count() == 1
    with pytest.raises(ValueError, match="other amounts"):
        settlement_submit(request=replace(request, refund_usdt_units=2 * 10**6), actor="test")
    check_until("deposit", deposit_id)
    info = selectors.deposit_info(deposit_id=deposit_id)
    assert info.settled and info.usdt_amount == 3 * 10**6 and info.symbol == "AAPL"

    (other,) = deposits(chain_user(7), 1, amount=10**6)
    with pytest.raises(SettlementRejected, match="RefundAboveDeposit"):
        settlement_submit(
            request=named_deposit(
                other,
                mint_token_units=0,
                refund_usdt_units=10**6 + 1,
                order_id=None,
            ),
            actor="test",
        )
    with pytest.raises(SettlementRejected, match="UnknownDeposit"):
        settlement_submit(
            request=named_deposit(
                10**9,
                mint_token_units=0,
                refund_usdt_units=0,
                order_id=None,
            ),
            actor="test",
        )
    assert not SettlementTx.objects.filter(onchain_id__in=[other, 10**9]).exists()


def test_a_settlement_already_made_on_chain_is_recognised(chain_settings, chain_user, anvil):
    (deposit_id,) = deposits(chain_user(8), 1)
    # An earlier attempt whose record was lost: the vault already has it settled.
    anvil.client().transact(
        private_key=OPERATOR_KEY,
        contract="BroncoVault",
        address=chain_settings.vault,
        fn="settleDeposit",
        args=named_deposit(deposit_id, mint_token_units=1, refund_usdt_units=0).vault_call()[1],
    )
    nonce_before = anvil.client().pending_nonce(address_of_key(OPERATOR_KEY))
    row = settlement_submit(
        request=named_deposit(
            deposit_id,
            mint_token_units=1,
            refund_usdt_units=0,
            order_id=None,
        ),
        actor="test",
    )
    assert row.status == SettlementStatus.CONFIRMED and row.already_settled
    assert row.nonce is None
    assert anvil.client().pending_nonce(address_of_key(OPERATOR_KEY)) == nonce_before
    assert settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.CONFIRMED
    assert AuditLog.objects.filter(action="chain.settlement_already_settled").exists()


def test_a_stuck_settlement_is_replaced_with_the_same_nonce_and_a_higher_fee(
    own_chain, chain_user, settings
):
    node, contracts = own_chain
    user = chain_user(2, node=node, contracts=contracts)
    (deposit_id,) = deposits(user, 1)
    node.rpc("evm_setAutomine", [False])
    row = settlement_submit(
        request=named_deposit(
            deposit_id,
            mint_token_units=10**18,
            refund_usdt_units=0,
            order_id=None,
        ),
        actor="test",
    )
    assert row.status == SettlementStatus.SENT
    settings.CHAIN_SETTLEMENT_STUCK_SECONDS = 3600
    assert settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.PENDING
    assert row.attempts.count() == 1  # not waited long enough yet
    settings.CHAIN_SETTLEMENT_STUCK_SECONDS = 0
    assert settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.PENDING
    first, second = row.attempts.order_by("id")
    assert first.nonce == second.nonce
    assert second.max_fee_per_gas > first.max_fee_per_gas
    assert second.max_priority_fee_per_gas > first.max_priority_fee_per_gas
    settings.CHAIN_SETTLEMENT_STUCK_SECONDS = 3600
    node.rpc("evm_mine")
    assert settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.CONFIRMED
    row.refresh_from_db()
    assert row.tx_hash == second.tx_hash and not row.already_settled
    client = node.client()
    assert client.receipt(first.tx_hash) is None and client.receipt(second.tx_hash).succeeded
    assert AuditLog.objects.filter(action="chain.settlement_replaced").count() == 1


def test_losing_a_settlement_race_on_chain_counts_as_settled(own_chain, chain_user):
    node, contracts = own_chain
    user = chain_user(3, node=node, contracts=contracts)
    (deposit_id,) = deposits(user, 1)
    node.rpc("evm_setAutomine", [False])
    client = node.client()
    operator = address_of_key(OPERATOR_KEY)
    # Someone else's attempt with the same key reaches the pool first.
    gas = client.estimate_gas(
        contract="BroncoVault",
        address=contracts.vault,
        fn="settleDeposit",
        args=named_deposit(deposit_id, mint_token_units=7, refund_usdt_units=0).vault_call()[1],
        sender=operator,
    )
    fees = client.fee_quote(min_priority_fee=10**9)
    earlier = client.sign(
        private_key=OPERATOR_KEY,
        contract="BroncoVault",
        address=contracts.vault,
        fn="settleDeposit",
        args=named_deposit(deposit_id, mint_token_units=7, refund_usdt_units=0).vault_call()[1],
        nonce=client.pending_nonce(operator),
        gas_limit=gas * 2,
        max_fee_per_gas=2 * fees.base_fee_per_gas + 10**9,
        max_priority_fee_per_gas=10**9,
        chain_id=contracts.chain_id,
    )
    client.send_raw(earlier.raw)
    row = settlement_submit(
        request=named_deposit(
            deposit_id,
            mint_token_units=7,
            refund_usdt_units=0,
            order_id=None,
        ),
        actor="test",
    )
    assert row.nonce == earlier.nonce + 1
    node.rpc("evm_mine")
    assert client.receipt(row.tx_hash).status == 0  # ours reverted: AlreadySettled
    assert settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.CONFIRMED
    row.refresh_from_db()
    assert row.already_settled and row.status == SettlementStatus.CONFIRMED


def test_a_nonce_follows_the_sequence_and_the_node_when_the_key_is_used_elsewhere(own_chain):
    """The node's pending count is read before the row lock; the sequence decides unless the
    node is ahead (the key sent elsewhere), and then the count read under the lock does."""
    node, contracts = own_chain
    client = node.client()
    operator = address_of_key(OPERATOR_KEY)

    def allocate() -> int:
        with transaction.atomic():
            return nonce_allocate(client=client, chain_id=contracts.chain_id, address=operator)

    first = allocate()
    assert first == client.pending_nonce(operator)
    assert allocate() == first + 1  # nothing sent yet: the sequence, not the node's count
    for _ in range(3):  # the same key used by another program: the node's count moves ahead
        client.transact(
            private_key=OPERATOR_KEY,
            contract="MockUSDT",
            address=contracts.usdt,
            fn="approve",
            args=(operator, 1),
        )
    ahead = client.pending_nonce(operator)
    assert ahead > first + 2
    assert allocate() == ahead
    assert NonceSequence.objects.get(address=operator).next_nonce == ahead + 1


def test_a_settlement_whose_broadcast_is_on_its_way_is_not_taken_for_a_nonce_gap(
    own_chain, chain_user
):
    """A settlement is broadcast after its row commits. A heal that runs in between sees the
    stored next nonce above the node's count and nothing at the node: that is no gap. The
    heal sends the same signed transaction (the 10,000-order chaos run re-signed such a batch
    with a fresh nonce and both were mined); the sequence never goes back."""
    from chain.healing import nonce_heal

    node, contracts = own_chain
    user = chain_user(3, node=node, contracts=contracts)
    (vault_id,) = deposits(user, 1)
    client = node.client()
    operator = address_of_key(OPERATOR_KEY)
    with transaction.atomic():
        row = settlement_submit(
            request=named_deposit(vault_id, mint_token_units=0, refund_usdt_units=10**6),
            actor="test",
        )
        # Recorded with its nonce, not yet broadcast (that waits for the commit).
        assert NonceSequence.objects.get(address=operator).next_nonce == row.nonce + 1
        assert client.pending_nonce(operator) == row.nonce
        assert nonce_heal(actor="test", client=client) == 0
        assert client.transaction_known(row.tx_hash)  # the heal sent it
    check_until("deposit", vault_id)
    row.refresh_from_db()
    assert list(row.attempts.values_list("tx_hash", "nonce")) == [(row.tx_hash, row.nonce)]
    assert NonceSequence.objects.get(address=operator).next_nonce == row.nonce + 1
    assert client.pending_nonce(operator) == row.nonce + 1
    assert not AuditLog.objects.filter(action="chain.nonce_rebuilt").exists()
