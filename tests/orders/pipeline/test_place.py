"""Place: every exit of the stage, against a fake broker. The remark look-up makes a retry
after a lost answer adopt the broker's order instead of placing a second one."""

from datetime import timedelta

import pytest
from django.utils import timezone

from orders.models import OrderStatus
from orders.pipeline import PLACE, POLL, SETTLE, VALIDATE, order_place
from tests.factories import OrderFactory
from tests.orders.pipeline.conftest import past_deadline, validated

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_validated_order_is_placed_once_with_its_client_id_as_remark(fake_broker):
    fake_broker.set_quote("US.AAPL", "190")
    order = validated()
    nxt = order_place(order_id=order.pk)
    assert nxt.stage == POLL and nxt.countdown > 0
    order.refresh_from_db()
    assert order.status == OrderStatus.EXECUTING
    (placed,) = fake_broker.placed
    assert placed.client_id == order.client_id and order.futu_order_id == placed.broker_order_id
    assert order_place(order_id=order.pk) is None  # EXECUTING now: a second run does nothing
    assert len(fake_broker.placed) == 1


def test_an_order_not_yet_validated_goes_back_to_validate(fake_broker):
    order = OrderFactory()
    assert order_place(order_id=order.pk).stage == VALIDATE
    assert fake_broker.calls == []


def test_a_lost_answer_is_healed_by_the_remark_look_up(fake_broker):
    fake_broker.set_quote("US.AAPL", "190")
    order = validated()
    fake_broker.unavailable_next_place(after_accept=True)
    assert order_place(order_id=order.pk).stage == PLACE  # the broker has it; we never heard
    assert len(fake_broker.placed) == 1
    assert order_place(order_id=order.pk).stage == POLL
    order.refresh_from_db()
    assert order.futu_order_id == fake_broker.placed[0].broker_order_id
    assert len(fake_broker.placed) == 1


def test_rate_limited_waits_and_places_later(fake_broker):
    fake_broker.set_quote("US.AAPL", "190")
    order = validated()
    fake_broker.rate_limit_next_place(2.5)
    nxt = order_place(order_id=order.pk)
    assert nxt.stage == PLACE and nxt.countdown == pytest.approx(2.5)
    assert order_place(order_id=order.pk).stage == POLL


def test_a_rejection_refunds_everything(fake_broker):
    fake_broker.set_quote("US.AAPL", "190")
    order = validated()
    fake_broker.reject_next_place("insufficient lot")
    assert order_place(order_id=order.pk).stage == SETTLE
    order.refresh_from_db()
    assert (order.status, order.outcome) == (OrderStatus.SETTLING, OrderStatus.FAILED)
    assert "broker rejected" in order.last_error and order.refund_usdt == order.usdt_amount


def test_a_cancel_before_placing_refunds_without_a_broker_order(fake_broker):
    order = validated(cancel_requested_at=timezone.now())
    assert order_place(order_id=order.pk).stage == SETTLE
    order.refresh_from_db()
    assert order.outcome == OrderStatus.CANCELED
    assert fake_broker.placed == []


def test_past_the_deadline_nothing_is_placed(fake_broker):
    order = past_deadline(validated(deadline=timezone.now() + timedelta(minutes=1)))
    assert order_place(order_id=order.pk).stage == SETTLE
    order.refresh_from_db()
    assert order.outcome == OrderStatus.FAILED and "deadline" in order.last_error
    assert fake_broker.placed == []
