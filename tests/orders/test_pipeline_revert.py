"""A settlement that reverts on chain for a reason other than "already settled" raises an
alert and is retried until it settles: never dropped, never paid twice."""

import pytest
from django.db import transaction
from django.utils import timezone

from chain import selectors as chain_selectors
from chain.models import SettlementTx
from chain.services import settlement_check, settlement_submit
from chain.settlement import SettlementState
from core.models import Alert, AuditLog
from core.money import USDT_UNIT
from orders.models import Order, OrderStatus
from tests.fixtures.chain import drain_vault, fund_vault, named_deposit, wait_for
from tests.fixtures.pipeline import chain_deposit as _deposit
from tests.fixtures.pipeline import drive, fast_pipeline

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def own_stack(settings, own_chain, broker_settings):
    fast_pipeline(settings)
    broker_settings.set_security(code="US.AAPL", price="100.00", fill_mode="reject")
    return own_chain


def test_reverted_settlement_alerts_and_is_retried_until_settled(own_stack, chain_user):
    node, contracts = own_stack
    user = chain_user(2, node=node, contracts=contracts)
    usdt_before = chain_selectors.usdt_balance(address=user.address)
    order = _deposit(user, contracts, "AAPL", 500 * USDT_UNIT)  # rejected: all refunded
    Order.objects.filter(pk=order.pk).update(
        deadline=timezone.now() + timezone.timedelta(seconds=1)
    )
    drive(order.pk, until=lambda: Order.objects.get(pk=order.pk).status == OrderStatus.SETTLING)
    order.refresh_from_db()
    assert order.refund_usdt == 500 * USDT_UNIT

    # The settlement is signed while the vault holds the USDT and mined after it was
    # withdrawn, so it reverts on chain (not "already settled").
    with transaction.atomic():
        settlement_submit(
            request=named_deposit(
                int(order.onchain_id),
                mint_token_units=0,
                refund_usdt_units=order.refund_usdt,
                order_id=order.pk,
            ),
            actor="test",
        )
        drain_vault(node, contracts)
    assert wait_for(
        lambda: (
            settlement_check(kind="deposit", vault_id=int(order.onchain_id))
            == SettlementState.REVERTED
        )
    )
    # Funds come back (an operator tops the vault up); the pipeline retries on its own.
    fund_vault(node, contracts, chain_user(3, node=node, contracts=contracts), 600 * USDT_UNIT)

    drive(order.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.FAILED
    alert = Alert.objects.get(key=f"settlement_reverted:{order.pk}")
    assert alert.severity == "critical"
    assert AuditLog.objects.filter(order=order, action="order.settlement_reverted").exists()
    row = SettlementTx.objects.get(kind="deposit", onchain_id=int(order.onchain_id))
    assert order.settlement_tx_hash == row.tx_hash
    assert row.attempts.values("nonce").distinct().count() == 2
    assert chain_selectors.usdt_balance(address=user.address) == usdt_before
