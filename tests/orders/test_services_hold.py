"""Order holds (orders.services): hold, release, closing an order whose chain request
vanished in a reorg (FAILED with nothing settled, alerted when it traded), and reviving it
when the request is mined after all."""

from decimal import Decimal

import pytest

from core.models import Alert, AuditLog
from orders.exceptions import IllegalTransition
from orders.models import OrderStatus
from orders.services import (
    order_close_vanished,
    order_hold,
    order_release_hold,
    order_revive_vanished,
    orders_revive_vanished,
)
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


def test_a_closed_order_whose_request_came_back_settles_as_it_would_have():
    """Closed while SETTLING (traded, its figures final): revived with its outcome and
    figures, the traded alert answered (the position is the order's again), audited."""
    order = OrderFactory(
        status=OrderStatus.SETTLING,
        outcome=OrderStatus.EXECUTED,
        futu_order_id="FUTU-2",
        filled_qty=Decimal("1.5"),
        cost_usdt=300 * 10**6,
        fees_usdt=10**6,
        tokens_minted=15 * 10**17,
        refund_usdt=699 * 10**6,
    )
    order_close_vanished(order_id=order.pk, actor="test")
    assert Alert.objects.get(key=f"order.vanished_traded:{order.pk}").resolved_at is None
    revived = order_revive_vanished(order_id=order.pk, actor="listener")
    assert revived.status == OrderStatus.SETTLING and revived.outcome == OrderStatus.EXECUTED
    assert (int(revived.tokens_minted), int(revived.refund_usdt)) == (15 * 10**17, 699 * 10**6)
    assert Alert.objects.get(key=f"order.vanished_traded:{order.pk}").resolved_at is not None
    assert Alert.objects.get(key=f"order.revived:{order.pk}").severity == "critical"
    revived_entry = AuditLog.objects.get(order=order, action="order.revived")
    assert revived_entry.before["status"] == OrderStatus.FAILED
    # Idempotent: revived once; an order never closed as vanished is not touched.
    assert order_revive_vanished(order_id=order.pk, actor="listener") is None
    failed = OrderFactory(status=OrderStatus.FAILED)
    assert order_revive_vanished(order_id=failed.pk, actor="listener") is None
    assert orders_revive_vanished(order_ids=[order.pk, failed.pk], actor="listener") == []


@pytest.mark.parametrize("status", [OrderStatus.PENDING, OrderStatus.EXECUTING])
def test_a_closed_order_from_the_book_comes_back_to_settle_what_it_had(status):
    """Closed in the book or in a cycle (which then allocated it nothing): revived to settle
    what it had got, the rest of the deposit returned."""
    order = OrderFactory(
        status=status, cost_usdt=200 * 10**6, fees_usdt=10**6, tokens_minted=10**18
    )
    order_close_vanished(order_id=order.pk, actor="test")
    (revived_id,) = orders_revive_vanished(order_ids=[order.pk], actor="listener")
    revived = order.__class__.objects.get(pk=revived_id)
    assert revived.status == OrderStatus.SETTLING and revived.outcome == OrderStatus.EXECUTED
    assert int(revived.refund_usdt) == (1_000 - 200 - 1) * 10**6
    assert revived.cycle_id is None
    untraded = OrderFactory(status=status)
    order_close_vanished(order_id=untraded.pk, actor="test")
    revived = order_revive_vanished(order_id=untraded.pk, actor="listener")
    assert revived.outcome == OrderStatus.FAILED and int(revived.refund_usdt) == 1_000 * 10**6
