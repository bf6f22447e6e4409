"""The beat sweep moves every open settlement along through settlement_check."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chain.models import SettlementStatus, SettlementTx
from chain.services import settlement_submit
from chain.tasks import settlements_sweep
from tests.fixtures.chain import named_deposit, wait_for

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]


def test_the_sweep_checks_open_settlements_until_confirmed(chain_settings, chain_user):
    user = chain_user(9)
    deposit_id = user.deposit_id(user.deposit("AAPL", 2 * 10**6))
    row = settlement_submit(
        request=named_deposit(deposit_id, mint_token_units=3, refund_usdt_units=1),
        actor="test",
    )
    assert settlements_sweep() == 0  # younger than the sweep's grace period
    SettlementTx.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(minutes=1))

    def swept_to_confirmed():
        settlements_sweep()
        return SettlementTx.objects.get(pk=row.pk).status == SettlementStatus.CONFIRMED

    assert wait_for(swept_to_confirmed)
    assert settlements_sweep() == 0
