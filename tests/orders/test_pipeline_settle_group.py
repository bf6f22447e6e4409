"""Settlement by the batch on a real anvil node and vault: a batch of N orders is sent in one
transaction and confirmed with one receipt read per follow-up step, each order settling
exactly once; a batch that reverts on chain goes back to each order's own step, which holds
it with a critical alert and resubmits only once the vault would accept it."""

import pytest
from django.db import transaction

from chain import selectors as chain_selectors
from chain.client import ChainClient
from chain.models import SettlementBatch, SettlementStatus, SettlementTx
from chain.services import settlement_submit
from core.models import Alert, AuditLog
from core.money import USDT_UNIT
from orders.models import Order, OrderStatus
from orders.pipeline import SETTLE, Next, order_settle, orders_settle_group
from orders.pipeline.common import settle_untraded
from refunds.models import Refund, RefundOrigin
from tests.fixtures.chain import drain_vault, fund_vault, named_deposit, wait_for
from tests.fixtures.pipeline import chain_deposit, chain_redeem, fast_pipeline

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

N = 8
TOKEN = 10**18


@pytest.fixture
def receipts(monkeypatch):
    """Counts the receipt reads Bronco's chain client makes (each still goes to the node)."""
    calls: list[str] = []
    real = ChainClient.receipt

    def counted(self, tx_hash):  # type: ignore[no-untyped-def]
        calls.append(tx_hash)
        return real(self, tx_hash)

    monkeypatch.setattr(ChainClient, "receipt", counted)
    return calls


def _refused_deposits(node, contracts, chain_user, n: int) -> list[Order]:
    """`n` deposits on chain, each refused before trading: SETTLING, the whole deposit to
    be refunded by its settlement."""
    user = chain_user(4, node=node, contracts=contracts)
    orders = []
    for i in range(n):
        order = chain_deposit(user, contracts, "AAPL", (10 + i) * USDT_UNIT)
        settle_untraded(order, outcome=OrderStatus.FAILED, reason="test: refused", stage="test")
        orders.append(Order.objects.get(pk=order.pk))
    return user, orders


def _settled_entries(ids):
    return sorted(
        AuditLog.objects.filter(order_id__in=ids, action="order.settled").values_list(
            "order_id", flat=True
        )
    )


def test_a_batch_of_orders_confirms_with_one_receipt_read_and_settles_each_once(
    own_chain, chain_user, receipts, settings
):
    node, contracts = own_chain
    fast_pipeline(settings)
    user, orders = _refused_deposits(node, contracts, chain_user, N)
    ids = [o.pk for o in orders]
    balance_before = chain_selectors.usdt_balance(address=user.address)

    sent = orders_settle_group(order_ids=ids)
    assert sent.alone == {} and sent.follow == [ids]
    (batch,) = SettlementBatch.objects.all()
    assert set(SettlementTx.objects.values_list("batch_id", flat=True)) == {batch.pk}

    steps = 0
    follow = sent.follow
    while follow:
        assert steps < 100, "the batch never confirmed"
        (ids_,) = follow
        before = len(receipts)
        out = orders_settle_group(order_ids=ids_)
        assert len(receipts) - before == 1  # one receipt read for the batch, not one per id
        assert out.alone == {}
        follow = out.follow
        steps += 1

    batch.refresh_from_db()
    assert batch.status == SettlementStatus.CONFIRMED
    assert set(Order.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        OrderStatus.FAILED
    }
    assert _settled_entries(ids) == sorted(ids)
    assert set(Order.objects.filter(pk__in=ids).values_list("settlement_tx_hash", flat=True)) == {
        batch.tx_hash
    }
    refunds = Refund.objects.filter(order_id__in=ids, origin=RefundOrigin.AUTOMATIC)
    assert sorted(refunds.values_list("amount", flat=True)) == [
        (10 + i) * USDT_UNIT for i in range(N)
    ]
    paid = sum((10 + i) * USDT_UNIT for i in range(N))
    assert chain_selectors.usdt_balance(address=user.address) == balance_before + paid

    # A re-driven per-order task, or the group again: nothing more is sent or moved.
    reads = len(receipts)
    for pk in ids:
        assert order_settle(order_id=pk) is None
    assert orders_settle_group(order_ids=ids).follow == []
    assert len(receipts) == reads
    assert _settled_entries(ids) == sorted(ids)
    assert refunds.count() == N and SettlementBatch.objects.count() == 1
    assert chain_selectors.usdt_balance(address=user.address) == balance_before + paid


def test_deposits_and_redeems_of_a_group_settle_in_one_transaction(
    own_chain, chain_user, receipts, settings
):
    """Both kinds in one group: one settleBatch transaction (not one per kind), followed
    with one receipt read per step, each order settling once with what it is owed."""
    node, contracts = own_chain
    fast_pipeline(settings)
    user = chain_user(5, node=node, contracts=contracts)
    minted = chain_deposit(user, contracts, "AAPL", 50 * USDT_UNIT)
    settlement_submit(
        request=named_deposit(int(minted.onchain_id), mint_token_units=TOKEN, refund_usdt_units=0),
        actor="test",
    )
    assert wait_for(
        lambda: chain_selectors.is_settled(kind="deposit", onchain_id=int(minted.onchain_id))
    )
    orders = []
    for i in range(3):
        orders.append(chain_deposit(user, contracts, "AAPL", (10 + i) * USDT_UNIT))
        if i < 2:
            orders.append(chain_redeem(user, contracts, "AAPL", TOKEN // 4))
    for order in orders:
        settle_untraded(order, outcome=OrderStatus.FAILED, reason="test: refused", stage="test")
    ids = [o.pk for o in orders]
    usdt_before = chain_selectors.usdt_balance(address=user.address)
    tokens_before = chain_selectors.token_balance(symbol="AAPL", address=user.address)

    sent = orders_settle_group(order_ids=ids)
    assert sent.alone == {} and sent.follow == [sorted(ids)]
    (batch,) = SettlementBatch.objects.exclude(settlements__order_id=minted.pk).distinct()
    assert batch.kind == "mixed"
    follow = sent.follow
    while follow:
        (ids_,) = follow
        before = len(receipts)
        out = orders_settle_group(order_ids=ids_)
        assert len(receipts) - before == 1  # one read for the transaction, both kinds in it
        assert out.alone == {}
        follow = out.follow
    assert set(Order.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        OrderStatus.FAILED
    }
    assert _settled_entries(ids) == sorted(ids)
    assert set(Order.objects.filter(pk__in=ids).values_list("settlement_tx_hash", flat=True)) == {
        batch.tx_hash
    }
    refunded = sum((10 + i) * USDT_UNIT for i in range(3))
    assert chain_selectors.usdt_balance(address=user.address) == usdt_before + refunded
    returned = chain_selectors.token_balance(symbol="AAPL", address=user.address)
    assert returned == tokens_before + 2 * (TOKEN // 4)


def test_a_reverted_batch_is_held_and_alerted_per_order_and_retried_once_the_vault_accepts(
    own_chain, chain_user, settings
):
    node, contracts = own_chain
    fast_pipeline(settings)
    user, orders = _refused_deposits(node, contracts, chain_user, 3)
    ids = [o.pk for o in orders]
    balance_before = chain_selectors.usdt_balance(address=user.address)

    # The batch is signed while the vault holds the USDT and mined after it was withdrawn.
    with transaction.atomic():
        sent = orders_settle_group(order_ids=ids)
        drain_vault(node, contracts)
    assert sent.follow == [ids]

    def reverted():
        out = orders_settle_group(order_ids=ids)
        return out if out.alone else None

    out = wait_for(reverted)
    assert out.alone == dict.fromkeys(ids, Next(SETTLE)) and out.follow == []
    assert SettlementBatch.objects.get().status == SettlementStatus.REVERTED

    for pk in ids:  # each order's own step: held, critical alert, not resent while refused
        assert order_settle(order_id=pk).stage == SETTLE
        order = Order.objects.get(pk=pk)
        assert order.status == OrderStatus.SETTLING and order.held_at is not None
        assert Alert.objects.get(key=f"settlement_reverted:{pk}").severity == "critical"
    assert SettlementTx.objects.filter(status=SettlementStatus.REVERTED).count() == 3
    assert _settled_entries(ids) == []

    fund_vault(node, contracts, chain_user(3, node=node, contracts=contracts), 100 * USDT_UNIT)

    def all_settled():
        for pk in ids:
            order_settle(order_id=pk)
        return not Order.objects.filter(pk__in=ids, status=OrderStatus.SETTLING).exists()

    assert wait_for(all_settled, timeout=60)
    assert _settled_entries(ids) == sorted(ids)
    assert not Order.objects.filter(pk__in=ids, held_at__isnull=False).exists()
    paid = sum((10 + i) * USDT_UNIT for i in range(3))
    assert chain_selectors.usdt_balance(address=user.address) == balance_before + paid
    assert Refund.objects.filter(order_id__in=ids, origin=RefundOrigin.AUTOMATIC).count() == 3
