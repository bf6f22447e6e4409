"""The refunds app's reads that alerts and metrics use: committed amounts, failure counts,
and the database's own guards on refund rows."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from orders.models import OrderStatus
from refunds import selectors
from refunds.models import Refund, RefundOrigin, RefundStatus
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db

S = RefundStatus


def refund(order, amount, status, origin=RefundOrigin.MANUAL, **kw):
    return Refund.objects.create(
        order=order,
        amount=amount,
        reason="t",
        origin=origin,
        status=status,
        requested_by="alice",
        **kw,
    )


def test_committed_counts_unpaid_refunds_and_settling_orders():
    pending = OrderFactory(order_type="BUY", usdt_amount=1_000)
    for status, amount in (
        (S.AWAITING_APPROVAL, 1),  # not approved: not committed
        (S.APPROVED, 10),
        (S.WAITING_RESERVE, 20),
        (S.SENT, 40),
        (S.CONFIRMED, 80),  # paid
        (S.FAILED, 160),
        (S.REJECTED, 320),
    ):
        refund(pending, amount, status)
    OrderFactory(order_type="BUY", status=OrderStatus.SETTLING, refund_usdt=1_000, usdt_amount=5)
    OrderFactory(order_type="SELL", status=OrderStatus.SETTLING, payout_usdt=3_000)
    OrderFactory(order_type="BUY", status=OrderStatus.EXECUTED, refund_usdt=7_000)
    assert selectors.committed_units() == 10 + 20 + 40 + 1_000 + 3_000
    assert selectors.order_refunds_in_flight(order_id=pending.pk)
    assert selectors.order_manually_refunded(order_id=pending.pk) == 80


def test_refund_failure_count_since():
    order = OrderFactory(order_type="BUY", usdt_amount=100)
    now = timezone.now()
    refund(order, 1, S.FAILED, failed_at=now - timedelta(hours=2))
    refund(order, 2, S.FAILED, failed_at=now)
    refund(order, 3, S.CONFIRMED)
    assert selectors.refund_failure_count(since=now - timedelta(hours=1)) == 1
    assert selectors.refund_failure_count(since=now - timedelta(hours=3)) == 2


def test_reserve_status_headroom():
    status = selectors.ReserveStatus(balance=100, committed=30, floor=50)
    assert status.headroom == 20


@pytest.mark.parametrize(
    "fields, constraint",
    [
        ({"amount": 0}, "refund_amount_positive"),
        ({"status": "PAID"}, "refund_status_valid"),
        ({"origin": "robot"}, "refund_origin_valid"),
        ({"requested_by": ""}, "refund_requester_named"),
        ({"approved_by": "alice"}, "refund_approver_not_requester"),
    ],
)
def test_the_database_refuses_bad_rows(fields, constraint):
    order = OrderFactory(order_type="BUY", usdt_amount=100)
    values = {
        "order": order,
        "amount": 5,
        "reason": "t",
        "origin": RefundOrigin.MANUAL,
        "status": S.APPROVED,
        "requested_by": "alice",
    }
    with pytest.raises(IntegrityError, match=constraint), transaction.atomic():
        Refund.objects.create(**(values | fields))


def test_one_automatic_refund_per_order():
    order = OrderFactory(order_type="BUY", usdt_amount=100)
    refund(order, 5, S.CONFIRMED, origin=RefundOrigin.AUTOMATIC)
    with (
        pytest.raises(IntegrityError, match="refund_one_automatic_per_order"),
        transaction.atomic(),
    ):
        refund(order, 5, S.CONFIRMED, origin=RefundOrigin.AUTOMATIC)
