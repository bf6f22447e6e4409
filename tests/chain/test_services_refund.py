"""The settlement sender's refund kind (refundDeposit keyed by the refund id) on a real anvil
node: paid once, idempotent, an id paid by a lost attempt recognised, a settled deposit
refused for good."""

import pytest

from chain import selectors
from chain.exceptions import SettlementRejected
from chain.models import SettlementTx
from chain.services import settlement_check, settlement_submit
from chain.settlement import RefundPayment, SettlementState
from tests.fixtures.chain import OPERATOR_KEY, named_deposit, named_refund, wait_for

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

UNIT = 10**6


def refund(deposit_id, refund_id, amount):
    return settlement_submit(
        request=named_refund(refund_id=refund_id, deposit_id=deposit_id, refund_usdt_units=amount),
        actor="test",
    )


def confirmed(refund_id):
    return wait_for(
        lambda: settlement_check(kind="refund", vault_id=refund_id) == SettlementState.CONFIRMED
    )


def test_a_refund_is_sent_once_and_confirmed(chain_settings, chain_user):
    user = chain_user(6)
    deposit_id = user.deposit_id(user.deposit("AAPL", 10 * UNIT))
    before = selectors.usdt_balance(address=user.address)

    first = refund(deposit_id, 91_001, 4 * UNIT)
    again = refund(deposit_id, 91_001, 4 * UNIT)
    confirmed(91_001)

    assert again.pk == first.pk and SettlementTx.objects.filter(kind="refund").count() == 1
    assert selectors.usdt_balance(address=user.address) == before + 4 * UNIT
    assert selectors.is_settled(kind="refund", onchain_id=91_001)
    assert selectors.deposit_refunded(deposit_id=deposit_id) == 4 * UNIT
    with pytest.raises(ValueError, match="other amounts"):
        refund(deposit_id, 91_001, 5 * UNIT)
    with pytest.raises(ValueError, match="names its deposit"):
        RefundPayment(
            refund_id=91_002,
            deposit_id=None,
            user=user.address,
            symbol="AAPL",
            deposit_usdt_units=UNIT,
            refund_usdt_units=UNIT,
        )


def test_an_id_paid_by_a_lost_attempt_is_recorded_as_paid(chain_settings, chain_user, anvil):
    user = chain_user(7)
    deposit_id = user.deposit_id(user.deposit("AAPL", 10 * UNIT))
    anvil.client().transact(
        private_key=OPERATOR_KEY,
        contract="BroncoVault",
        address=chain_settings.vault,
        fn="refundDeposit",
        args=named_refund(
            refund_id=91_101, deposit_id=deposit_id, refund_usdt_units=3 * UNIT
        ).vault_call()[1],
    )
    before = selectors.usdt_balance(address=user.address)

    row = refund(deposit_id, 91_101, 3 * UNIT)

    assert row.already_settled and row.status == "CONFIRMED" and row.nonce is None
    assert selectors.usdt_balance(address=user.address) == before


def test_a_refund_of_a_settled_deposit_is_refused(chain_settings, chain_user, anvil):
    user = chain_user(8)
    deposit_id = user.deposit_id(user.deposit("AAPL", 10 * UNIT))
    anvil.client().transact(
        private_key=OPERATOR_KEY,
        contract="BroncoVault",
        address=chain_settings.vault,
        fn="settleDeposit",
        args=named_deposit(deposit_id, mint_token_units=0, refund_usdt_units=0).vault_call()[1],
    )
    with pytest.raises(SettlementRejected, match="AlreadySettled"):
        refund(deposit_id, 91_201, UNIT)
    assert not SettlementTx.objects.filter(kind="refund", onchain_id=91_201).exists()
