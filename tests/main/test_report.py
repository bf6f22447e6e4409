"""The report's broker-order rate: the most placements in any 30 s, and the mean."""

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest

from core.audit import audit_record
from devtools.report import broker_order_rate
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def _placed_at(offsets: list[float]):
    orders = []
    for offset in offsets:
        order = OrderFactory()
        # The clock is the one thing mocked: audit entries take their time from it.
        with mock.patch("core.audit.timezone.now", return_value=T0 + timedelta(seconds=offset)):
            audit_record(actor="test", action="order.placed", order_id=order.pk)
        orders.append(order)
    return orders


def test_fifteen_per_window_for_a_minute_is_fifteen_max_and_mean():
    # 31 placements 2 s apart: 15 in any 30 s window (a 16th would sit on the edge),
    # 30 gaps over 60 s, so 15 per 30 s on average.
    rate = broker_order_rate(_placed_at([2.0 * i for i in range(31)]))
    assert rate["placed"] == 31
    assert rate["max_per_window"] == 15
    assert rate["mean_per_window"] == 15.0


def test_a_burst_shorter_than_a_window_is_its_count():
    rate = broker_order_rate(_placed_at([0, 1, 2]))
    assert rate["max_per_window"] == 3
    assert rate["mean_per_window"] == 3.0
