"""Validate: every exit of the stage. It books what can trade (no broker request: cycles
price the book) and settles untraded what cannot."""

import pytest
from django.utils import timezone

from orders.models import OrderStatus, OrderType
from orders.pipeline import SETTLE, order_validate
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _refused(order, outcome, reason_part):
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING
    assert order.outcome == outcome
    assert reason_part in order.last_error
    return order


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"order_type": OrderType.SELL, "usdt_amount": 0, "token_amount": 3 * 10**18}],
    ids=["deposit", "redeem"],
)
def test_what_can_trade_is_booked_without_a_broker_request(fake_broker, kwargs):
    order = OrderFactory(**kwargs)
    assert order_validate(order_id=order.pk) is None
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING and order.booked_at is not None
    assert fake_broker.calls == []


def test_a_booked_order_or_one_that_moved_on_is_left_alone(fake_broker):
    booked = OrderFactory(booked_at=timezone.now())
    moved = OrderFactory(status=OrderStatus.EXECUTING)
    for order in (booked, moved):
        version = order.version
        assert order_validate(order_id=order.pk) is None
        order.refresh_from_db()
        assert order.version == version


def test_a_deposit_worth_a_fraction_of_a_share_is_booked(fake_broker):
    order = OrderFactory(symbol="TCEHY", stock_code="HK.00700", usdt_amount=5 * 10**6)
    assert order_validate(order_id=order.pk) is None
    order.refresh_from_db()
    assert order.booked_at is not None


@pytest.mark.parametrize(
    ("kwargs", "outcome", "reason"),
    [
        ({"manual_refund_usdt": 1_000 * 10**6}, OrderStatus.CANCELED, "refunded manually"),
        ({"cancel_requested_at": timezone.now()}, OrderStatus.CANCELED, "cancelled by the user"),
        ({"stock_code": "", "symbol": "NOPE"}, OrderStatus.FAILED, "is not listed"),
        ({"usdt_amount": 500_000}, OrderStatus.FAILED, "below the minimum"),
        (
            {"order_type": OrderType.SELL, "usdt_amount": 0, "token_amount": 0},
            OrderStatus.FAILED,
            "nothing to redeem",
        ),
    ],
)
def test_refusals_settle_untraded(fake_broker, kwargs, outcome, reason):
    order = OrderFactory(**kwargs)
    assert order_validate(order_id=order.pk).stage == SETTLE
    order = _refused(order, outcome, reason)
    assert fake_broker.calls == []
    if order.order_type == OrderType.BUY:
        assert order.refund_usdt == int(order.usdt_amount) - int(order.manual_refund_usdt)
