"""The vault's manual refund path (refundDeposit) on a real anvil node: operator only, at most
once per refund id, only before settlement, and manual refunds plus the settlement's refund
never exceed the deposit."""

import pytest

from chain.client import decode_log, event_topic
from chain.events import DepositRefunded
from chain.exceptions import ContractReverted
from tests.fixtures.chain import DEPLOYER_KEY, OPERATOR_KEY

pytestmark = pytest.mark.chain

UNIT = 10**6


@pytest.fixture
def vault(anvil, deployed_contracts):
    client = anvil.client()

    def send(key, fn, *args):
        return client.transact(
            private_key=key,
            contract="BroncoVault",
            address=deployed_contracts.vault,
            fn=fn,
            args=args,
        )

    def view(fn, *args):
        return client.call("BroncoVault", deployed_contracts.vault, fn, *args)

    def usdt_of(address):
        return client.call("MockUSDT", deployed_contracts.usdt, "balanceOf", address)

    return send, view, usdt_of


def named(view, vault_id, fn="deposits"):
    """(id, user, symbol, amount) of the request the vault holds at `vault_id`, as the
    settlement calls name it (a placeholder for an unknown id)."""
    record = view(fn, vault_id)
    if int(record[0], 16) == 0:
        return (vault_id, "0x000000000000000000000000000000000000dEaD", b"AAPL".ljust(32, b"\0"), 1)
    return (vault_id, record[0], bytes.fromhex(record[1][2:]), record[2])


def reverted_with(error_name, fn, *args):
    with pytest.raises(ContractReverted) as info:
        fn(*args)
    assert info.value.error_name == error_name, info.value
    return info.value


def test_refund_pays_the_depositor_once_per_refund_id(anvil, deployed_contracts, chain_user, vault):
    send, view, usdt_of = vault
    user = chain_user(2)
    deposit_id = user.deposit_id(user.deposit("AAPL", 100 * UNIT))
    before = usdt_of(user.address)

    receipt = send(OPERATOR_KEY, "refundDeposit", *named(view, deposit_id), 7001, 30 * UNIT)

    assert usdt_of(user.address) == before + 30 * UNIT
    assert view("refundedOf", deposit_id) == 30 * UNIT
    assert view("refundIdUsed", 7001) is True
    logs = anvil.client().get_logs(
        from_block=receipt.block_number,
        to_block=receipt.block_number,
        address=deployed_contracts.vault,
        topics=[event_topic("DepositRefunded")],
    )
    (event,) = [decode_log(log) for log in logs if log.tx_hash == receipt.tx_hash]
    assert isinstance(event, DepositRefunded)
    assert (event.deposit_id, event.refund_id, event.user, event.refund_usdt_units) == (
        deposit_id,
        7001,
        user.address,
        30 * UNIT,
    )
    err = reverted_with(
        "RefundIdUsed", send, OPERATOR_KEY, "refundDeposit", *named(view, deposit_id), 7001, 1
    )
    assert err.error_args == (7001,)
    assert usdt_of(user.address) == before + 30 * UNIT


def test_only_the_operator_refunds(chain_user, vault):
    send, view, _ = vault
    user = chain_user(3)
    deposit_id = user.deposit_id(user.deposit("AAPL", 10 * UNIT))
    for key in (user.key, DEPLOYER_KEY):
        reverted_with(
            "AccessControlUnauthorizedAccount",
            send,
            key,
            "refundDeposit",
            *named(view, deposit_id),
            7101,
            UNIT,
        )
    assert view("refundedOf", deposit_id) == 0


def test_refunds_never_exceed_the_deposit_together_with_the_settlement(chain_user, vault):
    send, view, usdt_of = vault
    user = chain_user(4)
    deposit_id = user.deposit_id(user.deposit("TSLA", 10 * UNIT))
    send(OPERATOR_KEY, "refundDeposit", *named(view, deposit_id), 7201, 6 * UNIT)
    err = reverted_with(
        "RefundAboveDeposit",
        send,
        OPERATOR_KEY,
        "refundDeposit",
        *named(view, deposit_id),
        7202,
        4 * UNIT + 1,
    )
    assert err.error_args == (deposit_id, 10 * UNIT + 1, 10 * UNIT)
    reverted_with(
        "ZeroAmount", send, OPERATOR_KEY, "refundDeposit", *named(view, deposit_id), 7203, 0
    )
    reverted_with(
        "UnknownDeposit", send, OPERATOR_KEY, "refundDeposit", *named(view, 10**9), 7204, 1
    )
    # The settlement may refund only what the manual refunds left.
    err = reverted_with(
        "RefundAboveDeposit",
        send,
        OPERATOR_KEY,
        "settleDeposit",
        *named(view, deposit_id),
        0,
        4 * UNIT + 1,
    )
    assert err.error_args == (deposit_id, 10 * UNIT + 1, 10 * UNIT)
    before = usdt_of(user.address)
    send(OPERATOR_KEY, "settleDeposit", *named(view, deposit_id), 0, 4 * UNIT)
    assert usdt_of(user.address) == before + 4 * UNIT
    assert view("isDepositSettled", deposit_id) is True


def test_no_refund_after_settlement(chain_user, vault):
    send, view, _ = vault
    user = chain_user(5)
    deposit_id = user.deposit_id(user.deposit("NVDA", 5 * UNIT))
    send(
        OPERATOR_KEY, "refundDeposit", *named(view, deposit_id), 7301, 5 * UNIT
    )  # everything, manually
    send(OPERATOR_KEY, "settleDeposit", *named(view, deposit_id), 0, 0)  # closes the deposit
    err = reverted_with(
        "AlreadySettled", send, OPERATOR_KEY, "refundDeposit", *named(view, deposit_id), 7302, 1
    )
    assert err.error_args == (deposit_id,)
    assert view("refundedOf", deposit_id) == 5 * UNIT
    assert view("refundIdUsed", 7302) is False
