"""Users' price bounds through the pipeline, the order created as the listener creates it
(the Deposit and its DepositTerms decoded from the receipt): a limit deposit whose bound is
below the market waits in the book past its deadline and fills once the price comes down,
the cycle's broker limit never above the bound and the vault accepting the settlement; one
whose bound the market never reaches expires untouched, refunded in full."""

import pytest
from django.utils import timezone

from chain import ingest
from chain.client import decode_log, symbol_to_bytes32
from core.money import USDT_UNIT
from orders.models import Cycle, Order, OrderStatus, Waiting
from orders.services import order_create_from_chain
from tests.fixtures.pipeline import cycle_step, drive
from tests.orders.test_pipeline import _assert_buy_conserved, _balances, stack  # noqa: F401

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def _limit_deposit(user, contracts, symbol, units, bound_units, expiry=0) -> Order:
    user.approve()
    receipt = user._send(
        "BroncoVault",
        contracts.vault,
        "deposit",
        symbol_to_bytes32(symbol),
        units,
        bound_units,
        expiry,
    )
    client = user.node.client()
    logs = client.get_logs(
        from_block=receipt.block_number, to_block=receipt.block_number, address=contracts.vault
    )
    decoded = [(log, decode_log(log)) for log in logs if log.tx_hash == receipt.tx_hash]
    terms = ingest._terms_in(decoded)
    (deposit,) = [d for _, d in decoded if d.name == "Deposit"]
    request = ingest._order_request(chain_id=contracts.chain_id, event=deposit, terms=terms)
    order, created = order_create_from_chain(request=request, actor="test")
    assert created
    return order


def _wait_for_price(order):
    drive(order.pk, until=lambda: Order.objects.get(pk=order.pk).waiting_for == Waiting.PRICE)
    Order.objects.filter(pk=order.pk).update(
        deadline=timezone.now() - timezone.timedelta(seconds=1)
    )
    for _ in range(3):
        cycle_step(order.symbol)
    return Order.objects.get(pk=order.pk)


def test_limit_deposit_waits_for_the_price_and_fills_within_its_bound(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    user = chain_user(2)
    _, tokens_before = _balances(user)
    order = _limit_deposit(user, contracts, "AAPL", 300 * USDT_UNIT, 95 * USDT_UNIT)
    assert order.price_bound == 95 * USDT_UNIT
    assert order.expires_at > timezone.now() + timezone.timedelta(days=6)  # the vault's default

    order = _wait_for_price(order)
    assert order.status == OrderStatus.PENDING and order.cycle_id is None
    assert order.waiting_for == Waiting.PRICE
    assert not Cycle.objects.filter(symbol="AAPL").exists() and sim.orders() == []

    sim.set_security(code="US.AAPL", price="94.00")
    order = drive(order.pk)
    assert order.status == OrderStatus.EXECUTED  # the vault accepted the settlement
    _assert_buy_conserved(order)
    assert order.avg_fill_price <= 95
    for cycle in Cycle.objects.filter(symbol="AAPL").exclude(limit_price=None):
        assert cycle.limit_price <= 95  # the broker limit never crossed the bound
    # The implied price per share (USDT spent less fee, over shares) is within the bound.
    implied = order.cost_usdt * 10**18 // order.tokens_minted
    assert implied <= 95 * USDT_UNIT
    assert _balances(user)[1] - tokens_before == order.tokens_minted


def test_a_bound_the_market_never_reaches_expires_untouched(stack, chain_user):  # noqa: F811
    contracts, sim = stack
    user = chain_user(3)
    usdt_before, _ = _balances(user)
    order = _limit_deposit(user, contracts, "AAPL", 200 * USDT_UNIT, 50 * USDT_UNIT)
    order = _wait_for_price(order)
    assert order.waiting_for == Waiting.PRICE
    Order.objects.filter(pk=order.pk).update(expires_at=timezone.now())

    order = drive(order.pk)
    assert order.status == OrderStatus.FAILED
    assert order.last_error == "the order expired before the price reached its bound"
    assert order.refund_usdt == 200 * USDT_UNIT and order.tokens_minted == 0
    assert _balances(user)[0] == usdt_before
    assert sim.orders() == []
