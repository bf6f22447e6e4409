"""Fill corrections after settlement -> what the vault owes or is owed: the arithmetic
(examples), and a case opened over TCP by a reversal at the simulator, assessed against a
netting cycle's allocations, alerted and shown in the admin."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from django.urls import reverse

from core.models import Alert
from orders.models import Allocation, Cycle, CycleStatus, OrderStatus, OrderType
from tests.factories import CycleFactory, OrderFactory
from trading import services
from trading.compensation import AllocationShare, FillAllocations, fill_compensation
from trading.futu.execution import HISTORY_REUSE_SECONDS
from trading.models import BrokerFillCorrection

SHARE = 10**18
USDT = 10**6


def _buy_cycle() -> FillAllocations:
    # Two buyers got 3 and 1 shares (4 from the broker), a seller crossed 1 share in.
    return FillAllocations(
        ref="cycle 7",
        side="BUY",
        ccy_per_usdt=Decimal("1"),
        allocations=(
            AllocationShare(order_id=1, side="BUY", token_units=3 * SHARE, usdt_units=570 * USDT),
            AllocationShare(order_id=2, side="BUY", token_units=2 * SHARE, usdt_units=380 * USDT),
            AllocationShare(order_id=3, side="SELL", token_units=1 * SHARE, usdt_units=190 * USDT),
        ),
    )


def test_a_reversed_buy_leaves_the_vault_owing_the_shares_pro_rata():
    result = fill_compensation(
        before_qty=Decimal(4),
        before_price=Decimal("190"),
        after_qty=Decimal(0),
        after_price=None,
        fills=_buy_cycle(),
    )
    assert result.shares_owed_units == 4 * SHARE
    by_order = {line.order_id: line for line in result.lines}
    # 3/5 and 2/5 of the 4 missing shares, whose tokens they hold; the seller is not short.
    assert by_order[1].shares_owed_units == 12 * SHARE // 5
    assert by_order[2].shares_owed_units == 8 * SHARE // 5
    assert by_order[3].shares_owed_units == 0
    assert all(line.usdt_owed_units == 0 for line in result.lines)  # no price to re-price at
    assert result.broker_cash_units == 760 * USDT  # 4 x 190 returned to the account


def test_a_changed_price_reprices_every_participant():
    result = fill_compensation(
        before_qty=Decimal(4),
        before_price=Decimal("190"),
        after_qty=Decimal(4),
        after_price=Decimal("189.5"),
        fills=_buy_cycle(),
    )
    by_order = {line.order_id: line for line in result.lines}
    assert result.shares_owed_units == 0
    assert by_order[1].usdt_owed_units == 1_500_000  # bought 3 at 0.50 too much: owed
    assert by_order[2].usdt_owed_units == 1_000_000
    assert by_order[3].usdt_owed_units == -500_000  # sold 1 at 0.50 too much: owes
    assert result.usdt_owed_units == 2_000_000
    assert result.broker_cash_units == 2_000_000  # the broker charged 4 x 0.50 less


def test_a_sell_that_sold_less_leaves_shares_and_takes_cash_back():
    fills = FillAllocations(
        ref="cycle 8",
        side="SELL",
        ccy_per_usdt=Decimal("7.8"),
        allocations=(
            AllocationShare(order_id=5, side="SELL", token_units=200 * SHARE, usdt_units=1),
        ),
    )
    result = fill_compensation(
        before_qty=Decimal(200),
        before_price=Decimal("380"),
        after_qty=Decimal(100),
        after_price=Decimal("380"),
        fills=fills,
    )
    assert result.shares_owed_units == -100 * SHARE  # the vault holds 100 it burned tokens for
    # HKD 38,000 taken back = 4871.794871... USDT, rounded down for what the broker gives.
    assert result.broker_cash_units == -4_871_794_872
    with pytest.raises(ValueError):
        fill_compensation(
            before_qty=Decimal(-1),
            before_price=None,
            after_qty=Decimal(0),
            after_price=None,
            fills=fills,
        )


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_reversal_after_settlement_opens_an_assessed_case_shown_in_the_admin(
    broker_settings, admin_client
):
    buyers = [
        OrderFactory(status=OrderStatus.EXECUTED, symbol="AAPL", stock_code="US.AAPL")
        for _ in range(2)
    ]
    cycle = CycleFactory(
        quote_price=Decimal("190"),
        fee_rate=Decimal("0.001"),
        broker_units=3 * SHARE,
        limit_price=Decimal("191"),
    )
    state = services.broker_order_submit(
        client_id=cycle.client_id,
        code="US.AAPL",
        side="BUY",
        qty=Decimal(3),
        limit_price=Decimal("191"),
    )
    assert state.is_final and state.filled_qty == 3
    for order, shares in zip(buyers, (2, 1), strict=True):
        Allocation.objects.create(
            cycle=cycle,
            order=order,
            order_type=OrderType.BUY,
            token_units=shares * SHARE,
            usdt_units=shares * 190 * USDT,
            fee_units=0,
        )
    # The broker reverses the fill before the cycle is marked allocated: the case opens,
    # and waits for the allocation before it is assessed.
    broker_settings.reverse_fills(order_id=state.broker_order_id)
    time.sleep(HISTORY_REUSE_SECONDS)
    services.broker_order_sync(client_id=cycle.client_id)
    case = BrokerFillCorrection.objects.get(client_id=cycle.client_id)
    assert case.assessed_at is None
    Cycle.objects.filter(pk=cycle.pk).update(status=CycleStatus.ALLOCATED)
    services.broker_orders_watch()
    case.refresh_from_db()
    assert case.assessed_at is not None and case.allocation_ref == f"cycle {cycle.pk}"
    assert case.shares_owed_units == 3 * SHARE
    assert case.broker_cash_units == 3 * 190 * USDT
    owed = {line["order_id"]: int(line["shares_owed_units"]) for line in case.compensation}
    assert owed == {buyers[0].pk: 2 * SHARE, buyers[1].pk: 1 * SHARE}
    alert = Alert.objects.get(key=f"broker_compensation:{cycle.client_id}:{case.pk}")
    assert alert.severity == "critical" and "owes 3000000000000000000 share units" in alert.message
    services.broker_orders_watch()  # assessed once
    assert Alert.objects.get(key=alert.key).count == 1
    page = admin_client.get(reverse("admin:trading_brokerfillcorrection_change", args=[case.pk]))
    assert page.status_code == 200 and f"cycle {cycle.pk}" in page.content.decode()
    listing = admin_client.get(reverse("admin:trading_brokerfillcorrection_changelist"))
    assert cycle.client_id in listing.content.decode()
