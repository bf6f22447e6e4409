"""The report's broker-order rate (the cycles' placements): the most in any 30 s, and the
mean."""

from datetime import UTC, datetime, timedelta

import pytest

from devtools.report import broker_order_rate
from orders.models import Allocation, CycleStatus
from tests.factories import CycleFactory, OrderFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def _placed_at(offsets: list[float]):
    """One cycle per offset, each placing its broker order then, with one order in it."""
    orders = []
    for i, offset in enumerate(offsets):
        order = OrderFactory()
        cycle = CycleFactory(
            symbol=f"S{i}",
            status=CycleStatus.ALLOCATED,
            futu_order_id=str(1000 + i),
            placed_at=T0 + timedelta(seconds=offset),
        )
        Allocation.objects.create(
            cycle=cycle, order=order, order_type="BUY", token_units=1, usdt_units=1, fee_units=0
        )
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
