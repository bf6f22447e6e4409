"""Poll: every exit of the stage, against a fake broker."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from core.models import Alert
from orders.models import OrderStatus
from orders.pipeline import POLL, SETTLE, order_place, order_poll
from tests.orders.pipeline.conftest import past_deadline, validated
from trading.exceptions import BrokerUnavailable, RateLimited

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def working(fake_broker):
    """A deposit resting at the broker (5 shares at 190.95, nothing filled yet)."""
    fake_broker.set_quote("US.AAPL", "190")
    order = validated(deadline=timezone.now() + timedelta(minutes=5))
    assert order_place(order_id=order.pk).stage == POLL
    order.refresh_from_db()
    return order


def test_a_resting_order_is_polled_again_after_the_interval(fake_broker, working, settings):
    nxt = order_poll(order_id=working.pk)
    assert nxt == type(nxt)(POLL, settings.ORDER_POLL_INTERVAL_SECONDS)
    assert fake_broker.calls_to("cancel_order") == []


def test_an_order_that_is_not_executing_is_left_alone(fake_broker):
    order = validated()
    assert order_poll(order_id=order.pk) is None
    assert fake_broker.calls == []


def test_a_partial_fill_is_recorded_and_polling_goes_on(fake_broker, working):
    fake_broker.fill(working.futu_order_id, qty=2, price="190.50")
    assert order_poll(order_id=working.pk).stage == POLL
    working.refresh_from_db()
    assert working.filled_qty == 2 and working.avg_fill_price == Decimal("190.50")
    assert working.status == OrderStatus.EXECUTING


def test_a_final_order_is_finalized(fake_broker, working):
    fake_broker.fill(working.futu_order_id, price="190.50")
    assert order_poll(order_id=working.pk).stage == SETTLE
    working.refresh_from_db()
    assert (working.status, working.outcome) == (OrderStatus.SETTLING, OrderStatus.EXECUTED)


@pytest.mark.parametrize("error", [BrokerUnavailable("down"), RateLimited(4.0, "slow")])
def test_a_broker_that_cannot_answer_is_asked_again(fake_broker, working, error):
    fake_broker.fail_next("query_order", error)
    nxt = order_poll(order_id=working.pk)
    assert nxt.stage == POLL and nxt.countdown > 0
    working.refresh_from_db()
    assert working.status == OrderStatus.EXECUTING


def test_an_order_the_broker_lost_raises_one_alert_and_is_never_settled_on_a_guess(
    fake_broker, working
):
    fake_broker.lose(working.futu_order_id)
    for _ in range(3):
        assert order_poll(order_id=working.pk).stage == POLL
    (alert,) = Alert.objects.filter(key=f"broker_lost:{working.pk}")
    assert alert.severity == "critical" and alert.count == 3
    working.refresh_from_db()
    assert working.status == OrderStatus.EXECUTING


@pytest.mark.parametrize("why", ["user", "deadline"])
def test_a_cancel_or_the_deadline_cancels_at_the_broker_once(fake_broker, working, why):
    if why == "user":
        working.__class__.objects.filter(pk=working.pk).update(cancel_requested_at=timezone.now())
    else:
        past_deadline(working)
    assert order_poll(order_id=working.pk).stage == POLL
    assert len(fake_broker.calls_to("cancel_order")) == 1
    working.refresh_from_db()
    assert working.broker_cancel_sent_at is not None
    # The broker took the cancel: the next poll sees it final and finalizes.
    assert order_poll(order_id=working.pk).stage == SETTLE
    working.refresh_from_db()
    assert working.outcome == OrderStatus.CANCELED
    assert working.refund_usdt == working.usdt_amount
    assert len(fake_broker.calls_to("cancel_order")) == 1


def test_a_cancel_the_broker_cannot_take_now_is_sent_again_later(fake_broker, working):
    past_deadline(working)
    fake_broker.fail_next("cancel_order", BrokerUnavailable("down"))
    assert order_poll(order_id=working.pk).stage == POLL
    working.refresh_from_db()
    assert working.broker_cancel_sent_at is None
    assert order_poll(order_id=working.pk).stage == POLL
    working.refresh_from_db()
    assert working.broker_cancel_sent_at is not None
