"""Validate: every exit of the stage, against a fake broker."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from orders.models import OrderStatus, OrderType
from orders.pipeline import PLACE, SETTLE, VALIDATE, order_validate
from tests.factories import OrderFactory
from tests.orders.pipeline.conftest import past_deadline
from trading.exceptions import BrokerUnavailable, RateLimited

pytestmark = pytest.mark.django_db(transaction=True)


def _refused(order, outcome, reason_part):
    order.refresh_from_db()
    assert order.status == OrderStatus.SETTLING
    assert order.outcome == outcome
    assert reason_part in order.last_error
    return order


def test_a_deposit_is_priced_and_sized_on_one_quote(fake_broker):
    fake_broker.set_quote("US.AAPL", "190", lot_size=1)
    order = OrderFactory(usdt_amount=1_000 * 10**6)
    assert order_validate(order_id=order.pk).stage == PLACE
    order.refresh_from_db()
    assert order.price > Decimal(190)  # the buy limit sits above the quote (slippage)
    assert order.qty == 5  # whole shares the deposit covers at the limit, fees included
    assert len(fake_broker.calls_to("quote")) == 1
    assert fake_broker.calls_to("place_order") == []


def test_a_redeem_is_sized_from_its_tokens(fake_broker):
    fake_broker.set_quote("US.AAPL", "190", lot_size=1)
    order = OrderFactory(order_type=OrderType.SELL, usdt_amount=0, token_amount=3 * 10**18)
    assert order_validate(order_id=order.pk).stage == PLACE
    order.refresh_from_db()
    assert order.qty == 3 and order.price < Decimal(190)


def test_an_order_already_validated_goes_on_to_place(fake_broker):
    order = OrderFactory(qty=Decimal(5), price=Decimal("190.95"))
    assert order_validate(order_id=order.pk).stage == PLACE
    assert fake_broker.calls == []


def test_an_order_that_moved_on_is_left_alone(fake_broker):
    order = OrderFactory(status=OrderStatus.EXECUTING)
    assert order_validate(order_id=order.pk) is None


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
def test_refusals_before_the_broker_settle_untraded(fake_broker, kwargs, outcome, reason):
    order = OrderFactory(**kwargs)
    assert order_validate(order_id=order.pk).stage == SETTLE
    order = _refused(order, outcome, reason)
    assert fake_broker.calls == []
    if order.order_type == OrderType.BUY:
        assert order.refund_usdt == int(order.usdt_amount) - int(order.manual_refund_usdt)


def test_a_deposit_below_one_lot_is_refused(fake_broker):
    fake_broker.set_quote("HK.00700", "380", lot_size=100)
    order = OrderFactory(symbol="TCEHY", stock_code="HK.00700", usdt_amount=50 * 10**6)
    assert order_validate(order_id=order.pk).stage == SETTLE
    _refused(order, OrderStatus.FAILED, "")


@pytest.mark.parametrize(
    "script",
    [
        lambda b: None,  # no quote at all
        lambda b: b.set_quote("US.AAPL", "190", market_open=False),
        lambda b: b.fail_next("quote", BrokerUnavailable("down")),
        lambda b: b.fail_next("quote", RateLimited(3.0, "slow")),
    ],
    ids=["no-quote", "market-closed", "broker-unavailable", "rate-limited"],
)
def test_a_quote_that_cannot_be_had_retries_then_fails_past_the_deadline(fake_broker, script):
    script(fake_broker)
    order = OrderFactory(deadline=timezone.now() + timedelta(minutes=5))
    nxt = order_validate(order_id=order.pk)
    assert nxt.stage == VALIDATE and nxt.countdown > 0
    order.refresh_from_db()
    assert order.status == OrderStatus.PENDING and order.price is None

    script(fake_broker)
    past_deadline(order)
    assert order_validate(order_id=order.pk).stage == SETTLE
    _refused(order, OrderStatus.FAILED, "until the deadline")
