"""Finalize: the broker's final state becomes the order's outcome and settlement amounts,
exact to the base unit."""

from decimal import Decimal

import pytest

from orders.models import OrderStatus, OrderType
from orders.pipeline import SETTLE, order_finalize
from tests.orders.pipeline.conftest import validated
from trading.broker import BrokerOrder, BrokerStatus, Side

pytestmark = pytest.mark.django_db


def _final(order, status, filled, price=None, error=""):
    return BrokerOrder(
        broker_order_id="9",
        client_id=order.client_id,
        code=order.stock_code,
        side=Side.BUY if order.order_type == OrderType.BUY else Side.SELL,
        qty=order.qty,
        price=order.price,
        status=status,
        filled_qty=Decimal(filled),
        avg_fill_price=Decimal(price) if price else None,
        raw_status=status.name,
        last_error=error,
    )


def _executing(**kwargs):
    order = validated(status=OrderStatus.EXECUTING, **kwargs)
    order.refresh_from_db()
    return order


@pytest.mark.parametrize(
    ("status", "filled", "outcome"),
    [
        (BrokerStatus.FILLED, 5, OrderStatus.EXECUTED),
        (BrokerStatus.CANCELLED, 2, OrderStatus.EXECUTED),  # partly filled, rest cancelled
        (BrokerStatus.CANCELLED, 0, OrderStatus.CANCELED),
        (BrokerStatus.FAILED, 0, OrderStatus.FAILED),
    ],
)
def test_each_final_state_settles_a_deposit_exactly(status, filled, outcome):
    order = _executing()
    price = "190.50" if filled else None
    assert order_finalize(order=order, broker_order=_final(order, status, filled, price)).stage == (
        SETTLE
    )
    order.refresh_from_db()
    assert (order.status, order.outcome) == (OrderStatus.SETTLING, outcome)
    assert order.cost_usdt + order.fees_usdt + order.refund_usdt == order.usdt_amount
    if filled:
        assert order.tokens_minted == filled * 10**18
        assert order.cost_usdt == int(Decimal(filled) * Decimal("190.50") * 10**6)
    else:
        assert order.tokens_minted == 0 and order.refund_usdt == order.usdt_amount


def test_a_redeem_pays_proceeds_and_returns_unsold_tokens():
    order = _executing(order_type=OrderType.SELL, usdt_amount=0, token_amount=5 * 10**18)
    order_finalize(order=order, broker_order=_final(order, BrokerStatus.CANCELLED, 3, "190"))
    order.refresh_from_db()
    assert order.tokens_returned == 2 * 10**18
    assert order.payout_usdt + order.fees_usdt == order.cost_usdt == 570 * 10**6
