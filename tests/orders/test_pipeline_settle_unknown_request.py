"""A settlement the vault refuses because it holds no request at the id (UnknownDeposit), on a
real anvil node and vault: the request is missing only for a while (a reorg between its
revert and the re-mined blocks, or a node that lags its peers), so the order is retried
under a warning, not held for an operator, and settles once the request is back. Only a
refusal that outlasts ORDER_REQUEST_UNKNOWN_GRACE_SECONDS holds it with a critical alert.

Found by `bench/chaos.py --orders 10000`: the reorg fault reverted a block holding a deposit
the listener had recorded, sent its transaction again, and the settle stage asked the vault
in between; the order was held for good although its deposit was back on chain a second
later."""

import pytest

from chain import selectors as chain_selectors
from chain.client import chain_client
from chain.models import SettlementTx
from core.models import Alert
from core.money import USDT_UNIT
from orders.models import Order, OrderStatus
from orders.pipeline import SETTLE, Next, order_settle, orders_settle_group
from orders.pipeline.common import settle_untraded
from tests.fixtures.chain import wait_for
from tests.fixtures.pipeline import chain_deposit, fast_pipeline

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]


def _deposit_then_revert(own_chain, chain_user, usdt_units: int) -> tuple[Order, list, object]:
    """A refused deposit (SETTLING, its USDT to be refunded) recorded from the chain, whose
    blocks are then reverted: the vault no longer holds it. Returns the order, the reverted
    blocks' signed transactions (the user's approval and deposit, to send again in order, as
    a real reorg returns them to the pool) and the user."""
    node, contracts = own_chain
    user = chain_user(4, node=node, contracts=contracts)
    client = chain_client()
    snapshot = client.rpc("evm_snapshot", [])
    first = client.block_number() + 1
    order = chain_deposit(user, contracts, "AAPL", usdt_units)
    settle_untraded(order, outcome=OrderStatus.FAILED, reason="test: refused", stage="test")
    hashes = [
        tx
        for number in range(first, client.block_number() + 1)
        for tx in client.rpc("eth_getBlockByNumber", [hex(number), False])["transactions"]
    ]
    assert order.chain_tx_hash in hashes
    raws = [client.rpc("eth_getRawTransactionByHash", [h]) for h in hashes]
    assert client.rpc("evm_revert", [snapshot]) is True
    return Order.objects.get(pk=order.pk), raws, user


def test_a_request_missing_for_a_while_is_retried_and_settles_when_it_is_back(
    own_chain, chain_user, settings
):
    fast_pipeline(settings)
    order, raws, user = _deposit_then_revert(own_chain, chain_user, 25 * USDT_UNIT)
    balance_reverted = chain_selectors.usdt_balance(address=user.address)  # deposit undone
    key = f"settlement_request_unknown:{order.pk}"

    # The batch path hands the refused order to its own stage...
    out = orders_settle_group(order_ids=[order.pk])
    assert out.alone == {order.pk: Next(SETTLE)} and out.follow == []
    # ...which retries it later instead of holding it: a warning, nothing sent.
    for _ in range(2):
        assert order_settle(order_id=order.pk) == Next(
            SETTLE, countdown=settings.ORDER_RETRY_SECONDS
        )
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING and order.held_at is None
    alert = Alert.objects.get(key=key, resolved_at__isnull=True)
    assert alert.severity == "warning" and alert.count == 2
    assert not Alert.objects.filter(key=f"settlement_reverted:{order.pk}").exists()
    assert not SettlementTx.objects.exists()

    # The deposit is mined again (the same signed transactions: the same id).
    resent = [chain_client().rpc("eth_sendRawTransaction", [raw]) for raw in raws]
    assert order.chain_tx_hash in resent
    assert wait_for(lambda: chain_client().receipt(order.chain_tx_hash))
    balance_deposited = chain_selectors.usdt_balance(address=user.address)
    assert balance_deposited == balance_reverted - 25 * USDT_UNIT

    def settled():
        order_settle(order_id=order.pk)
        return Order.objects.get(pk=order.pk).status == OrderStatus.FAILED

    assert wait_for(settled, timeout=30)
    # Refunded once: the refused deposit's whole USDT.
    assert chain_selectors.usdt_balance(address=user.address) == balance_deposited + 25 * USDT_UNIT
    assert Alert.objects.get(key=key).resolved_at is not None
    assert SettlementTx.objects.filter(order_id=order.pk).count() == 1


def test_a_request_missing_past_the_grace_is_held_with_a_critical_alert(
    own_chain, chain_user, settings
):
    fast_pipeline(settings)
    settings.ORDER_REQUEST_UNKNOWN_GRACE_SECONDS = 0
    order, _raws, _user = _deposit_then_revert(own_chain, chain_user, 30 * USDT_UNIT)

    order_settle(order_id=order.pk)
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING and order.held_at is not None
    assert "UnknownDeposit" in order.hold_reason
    assert Alert.objects.get(key=f"settlement_reverted:{order.pk}").severity == "critical"
    # The warning gave way to the critical alert.
    assert Alert.objects.get(key=f"settlement_request_unknown:{order.pk}").resolved_at
    assert not SettlementTx.objects.exists()
