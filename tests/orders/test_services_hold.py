"""Order holds (orders.services): hold, release, and closing an order whose chain request
vanished in a reorg (FAILED with nothing settled, alerted when it traded)."""

from decimal import Decimal

import pytest

from core.models import Alert, AuditLog
from orders.exceptions import IllegalTransition
from orders.models import OrderStatus
from orders.services import order_close_vanished, order_hold, order_release_hold
from orders.state import order_transition
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_hold_and_release_are_audited_and_idempotent():
    order = OrderFactory(status=OrderStatus.EXECUTING)
    held = order_hold(order_id=order.pk, reason="reorg: first", actor="test")
    again = order_hold(order_id=order.pk, reason="reorg: second", actor="test")
    assert held.held_at is not None and again.hold_reason == "reorg: first"
    released = order_release_hold(order_id=order.pk, actor="test")
    assert released.held_at is None and released.hold_reason == ""
    assert order_release_hold(order_id=order.pk, actor="test").held_at is None
    actions = list(AuditLog.objects.filter(order=order).values_list("action", flat=True))
    assert actions.count("order.held") == 1 and actions.count("order.hold_released") == 1
    done = OrderFactory(status=OrderStatus.EXECUTED)
    assert order_hold(order_id=done.pk, reason="reorg", actor="test") is None


@pytest.mark.parametrize(
    "status", [OrderStatus.PENDING, OrderStatus.EXECUTING, OrderStatus.SETTLING]
)
def test_a_vanished_request_closes_its_order_with_nothing_settled(status):
    order = OrderFactory(status=status)
    order_hold(order_id=order.pk, reason="reorg: gone", actor="test")
    closed = order_close_vanished(order_id=order.pk, actor="test")
    assert closed.status == OrderStatus.FAILED and closed.outcome == OrderStatus.FAILED
    assert closed.held_at is None and not closed.settlement_tx_hash
    assert AuditLog.objects.filter(order=order, action="order.closed_vanished").exists()
    assert not Alert.objects.filter(key=f"order.vanished_traded:{order.pk}").exists()
    assert order_close_vanished(order_id=order.pk, actor="test").status == OrderStatus.FAILED


def test_a_vanished_request_that_traded_raises_a_critical_alert():
    order = OrderFactory(
        status=OrderStatus.EXECUTING, futu_order_id="FUTU-1", filled_qty=Decimal(2)
    )
    order_close_vanished(order_id=order.pk, actor="test")
    alert = Alert.objects.get(key=f"order.vanished_traded:{order.pk}")
    assert alert.severity == "critical"


def test_only_the_vanished_close_may_skip_settlement():
    order = OrderFactory(status=OrderStatus.EXECUTING)
    with pytest.raises(IllegalTransition):
        order_transition(
            order=order, to_status=OrderStatus.FAILED, actor="test", action="order.failed"
        )
