"""A settlement that reverts for a reason other than "already settled" is retried, never
dropped: here the vault is short of USDT when the refund is mined; once it is funded again,
the resubmission settles the deposit exactly once."""

import pytest
from django.db import transaction

from chain import selectors
from chain.models import SettlementStatus, SettlementTx
from chain.services import settlement_check, settlement_resubmit, settlement_submit
from chain.settlement import SettlementState
from tests.fixtures.chain import drain_vault, fund_vault, named_deposit, wait_for

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]


def test_reverted_settlement_is_resubmitted_once_funded(own_chain, chain_user):
    node, contracts = own_chain
    user = chain_user(2, node=node, contracts=contracts)
    deposit_id = user.deposit_id(user.deposit("AAPL", 100 * 10**6))
    usdt_before = selectors.usdt_balance(address=user.address)

    with transaction.atomic():
        # Estimated while the vault holds the deposit; broadcast after this block commits.
        settlement_submit(
            request=named_deposit(deposit_id, mint_token_units=0, refund_usdt_units=100 * 10**6),
            actor="test",
        )
        drain_vault(node, contracts)

    assert wait_for(
        lambda: settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.REVERTED
    )
    assert not selectors.is_settled(kind="deposit", onchain_id=deposit_id)
    # Still short: nothing is sent, it stays REVERTED with the reason.
    assert settlement_resubmit(kind="deposit", vault_id=deposit_id) == SettlementState.REVERTED
    assert "still reverts" in SettlementTx.objects.get(onchain_id=deposit_id).last_error

    fund_vault(node, contracts, chain_user(3, node=node, contracts=contracts), 100 * 10**6)
    assert settlement_resubmit(kind="deposit", vault_id=deposit_id) == SettlementState.PENDING
    assert wait_for(
        lambda: settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.CONFIRMED
    )
    row = SettlementTx.objects.get(onchain_id=deposit_id)
    assert row.status == SettlementStatus.CONFIRMED
    assert row.attempts.count() == 2
    assert len({a.nonce for a in row.attempts.all()}) == 2
    assert selectors.usdt_balance(address=user.address) == usdt_before + 100 * 10**6
    # A third call changes nothing.
    assert settlement_resubmit(kind="deposit", vault_id=deposit_id) == SettlementState.CONFIRMED
    assert selectors.usdt_balance(address=user.address) == usdt_before + 100 * 10**6
