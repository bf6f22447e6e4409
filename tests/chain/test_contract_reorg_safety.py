"""The vault's reorg safety on a real anvil node: ids are what a request is (re-mined in
another order, a user's requests keep their ids), settlements name what they settle and the
vault refuses a mismatch naming both sides, batched settlement skips settled ids and refuses a
mismatched batch whole. The two-argument deposit and redeem keep working."""

from dataclasses import replace

import pytest

from chain.client import address_of_key, decode_log, symbol_to_bytes32
from chain.exceptions import ContractReverted
from tests.fixtures.chain import (
    DEPLOYER_KEY,
    OPERATOR_KEY,
    call_of,
    named_deposit,
    named_redeem,
    named_refund,
)

pytestmark = [pytest.mark.chain, pytest.mark.django_db]

UNIT, TOKEN = 10**6, 10**18
KIND_DEPOSIT, KIND_REDEEM = 1, 2


@pytest.fixture
def vault(own_chain):
    node, contracts = own_chain
    client = node.client()

    def send(key, fn, *args):
        return client.transact(
            private_key=key, contract="BroncoVault", address=contracts.vault, fn=fn, args=args
        )

    def view(fn, *args):
        return client.call("BroncoVault", contracts.vault, fn, *args)

    return send, view


def reverted_with(error_name, fn, *args):
    with pytest.raises(ContractReverted) as info:
        fn(*args)
    assert info.value.error_name == error_name, info.value
    return info.value


def test_ids_are_derived_from_the_request_and_the_user_nonce(own_chain, chain_user, vault):
    node, contracts = own_chain
    send, view = vault
    user = chain_user(2, node=node, contracts=contracts)
    user.approve()
    assert view("nonces", user.address) == 0
    first = user.deposit_id(user.deposit("AAPL", 5 * UNIT))  # the two-argument deposit
    second = user.deposit_id(user.deposit("AAPL", 5 * UNIT))  # the same request again
    aapl = symbol_to_bytes32("AAPL")
    assert first == view("requestId", KIND_DEPOSIT, user.address, 0, aapl, 5 * UNIT)
    assert second == view("requestId", KIND_DEPOSIT, user.address, 1, aapl, 5 * UNIT)
    assert first != second and view("nonces", user.address) == 2
    send(OPERATOR_KEY, *call_of(named_deposit(first, mint_token_units=TOKEN, refund_usdt_units=0)))
    redeem_id = user.redeem_id(user.redeem("AAPL", TOKEN // 4))  # the two-argument redeem
    assert redeem_id == view("requestId", KIND_REDEEM, user.address, 2, aapl, TOKEN // 4)
    assert view("redeems", redeem_id)[:3] == [user.address, "0x" + aapl.hex(), TOKEN // 4]


def test_requests_re_mined_in_another_order_keep_their_ids(own_chain, chain_user):
    node, contracts = own_chain
    alice = chain_user(2, node=node, contracts=contracts)
    bob = chain_user(3, node=node, contracts=contracts)
    alice.approve()
    bob.approve()
    snapshot = node.rpc("evm_snapshot")
    alice_before = alice.deposit_id(alice.deposit("AAPL", 500 * UNIT))
    bob_before = bob.deposit_id(bob.deposit("TSLA", 1500 * UNIT))
    node.rpc("evm_revert", [snapshot])
    bob_after = bob.deposit_id(bob.deposit("TSLA", 1500 * UNIT))
    alice_after = alice.deposit_id(alice.deposit("AAPL", 500 * UNIT))
    # Mining order changed nothing: each request kept its own id (with ids numbered in
    # mining order, Bob's deposit would now hold Alice's old id).
    assert (alice_after, bob_after) == (alice_before, bob_before)


def test_a_settlement_naming_another_deposit_is_refused_naming_both(
    own_chain, chain_user, vault, settings
):
    node, contracts = own_chain
    send, view = vault
    alice = chain_user(2, node=node, contracts=contracts)
    bob = chain_user(3, node=node, contracts=contracts)
    alice_id = alice.deposit_id(alice.deposit("AAPL", 500 * UNIT))
    bob.deposit_id(bob.deposit("TSLA", 1500 * UNIT))
    right = named_deposit(alice_id, mint_token_units=2 * TOKEN, refund_usdt_units=119 * UNIT)
    aapl = symbol_to_bytes32("AAPL")
    for wrong in (
        replace(right, user=bob.address),
        replace(right, symbol="TSLA"),
        replace(right, deposit_usdt_units=1500 * UNIT),
    ):
        err = reverted_with("DepositMismatch", send, OPERATOR_KEY, *call_of(wrong))
        assert err.error_args[0] == alice_id
        # The record as the vault holds it, beside what the operator named.
        assert (
            err.error_args[4].lower() == alice.address.lower() and err.error_args[6] == 500 * UNIT
        )
        assert bytes.fromhex(str(err.error_args[5]).removeprefix("0x")) == aapl or (
            err.error_args[5] == aapl
        )
    err = reverted_with(
        "DepositMismatch", send, OPERATOR_KEY, *call_of(replace(right, user=bob.address))
    )
    assert err.error_args[1].lower() == bob.address.lower()
    # A refund naming another deposit is refused the same way.
    refund = named_refund(refund_id=77, deposit_id=alice_id, refund_usdt_units=UNIT)
    reverted_with("DepositMismatch", send, OPERATOR_KEY, *call_of(replace(refund, symbol="TSLA")))
    send(OPERATOR_KEY, *call_of(right))  # the right one pays, once
    assert view("isDepositSettled", alice_id) is True
    reverted_with("AlreadySettled", send, OPERATOR_KEY, *call_of(right))

    # Redeems: the same.
    redeem_id = alice.redeem_id(alice.redeem("AAPL", TOKEN))
    paid = named_redeem(redeem_id, payout_usdt_units=150 * UNIT, return_token_units=0)
    reverted_with(
        "RedeemMismatch", send, OPERATOR_KEY, *call_of(replace(paid, redeem_token_units=2 * TOKEN))
    )
    reverted_with(
        "ReturnAboveRedeem",
        send,
        OPERATOR_KEY,
        *call_of(replace(paid, return_token_units=TOKEN + 1)),
    )
    send(OPERATOR_KEY, *call_of(paid))
    reverted_with("UnknownDeposit", send, OPERATOR_KEY, *call_of(replace(right, deposit_id=12345)))


def test_a_batch_skips_settled_ids_and_a_mismatch_reverts_the_whole_batch(
    own_chain, chain_user, vault
):
    node, contracts = own_chain
    send, view = vault
    user = chain_user(4, node=node, contracts=contracts)
    ids = [user.deposit_id(user.deposit("AAPL", (10 + i) * UNIT)) for i in range(4)]
    items = [
        replace(
            named_deposit(i, mint_token_units=TOKEN // 2, refund_usdt_units=UNIT),
            cycle_id=9,
            price_per_share_units=8 * UNIT,
            fee_units=UNIT // 100,  # the most the schedule allows on 10 USDT (0.1 %)
        )
        for i in ids
    ]
    send(OPERATOR_KEY, *call_of(items[0]))  # settled earlier, alone
    receipt = send(
        OPERATOR_KEY,
        "settleDeposits",
        [items[0].batch_element(), items[1].batch_element(), items[1].batch_element()],
    )
    assert receipt.succeeded
    assert view("isDepositSettled", ids[1]) is True
    logs = node.client().get_logs(
        from_block=receipt.block_number, to_block=receipt.block_number, address=contracts.vault
    )
    names = [decode_log(log).name for log in logs]
    # 0 was settled before, 1 settles, 1 again is skipped: no revert, nothing paid twice.
    assert names == [
        "SettlementSkipped",
        "DepositSettled",
        "DepositFilled",
        "SettlementSkipped",
    ]
    # A mismatched element reverts the whole batch: 2 is not settled either.
    bad = replace(items[3], user=address_of_key(DEPLOYER_KEY))
    reverted_with(
        "DepositMismatch",
        send,
        OPERATOR_KEY,
        "settleDeposits",
        [items[2].batch_element(), bad.batch_element()],
    )
    assert view("isDepositSettled", ids[2]) is False
    # Charged above the deposit at the cycle price: refused.
    greedy = replace(items[2], mint_token_units=2 * TOKEN)
    reverted_with(
        "ChargeAboveDeposit", send, OPERATOR_KEY, "settleDeposits", [greedy.batch_element()]
    )
    reverted_with("EmptyBatch", send, OPERATOR_KEY, "settleDeposits", [])
    reverted_with(
        "AccessControlUnauthorizedAccount",
        send,
        DEPLOYER_KEY,
        "settleDeposits",
        [items[2].batch_element()],
    )
    # Redeems in a batch: proceeds at the cycle price bound the payout.
    redeem_id = user.redeem_id(user.redeem("AAPL", TOKEN // 2))
    sale = replace(
        named_redeem(redeem_id, payout_usdt_units=4 * UNIT, return_token_units=0),
        cycle_id=9,
        price_per_share_units=8 * UNIT,
        fee_units=UNIT // 10,
    )
    reverted_with(
        "PayoutAboveProceeds",
        send,
        OPERATOR_KEY,
        "settleRedeems",
        [replace(sale, payout_usdt_units=4 * UNIT).batch_element()],
    )
    send(
        OPERATOR_KEY,
        "settleRedeems",
        [replace(sale, payout_usdt_units=3 * UNIT, fee_units=3_000).batch_element()],
    )
    assert view("isRedeemSettled", redeem_id) is True
