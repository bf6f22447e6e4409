"""The demo report shows orders waiting for their market, per symbol."""

import pytest

from devtools.report import render, run_report
from orders.models import OrderStatus
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db


def test_report_counts_orders_waiting_for_the_market():
    orders = [
        OrderFactory(status=OrderStatus.PENDING, symbol="AAPL", waiting_for="market"),
        OrderFactory(status=OrderStatus.PENDING, symbol="AAPL", waiting_for="market"),
        OrderFactory(status=OrderStatus.PENDING, symbol="AAPL"),
        OrderFactory(status=OrderStatus.FAILED, symbol="TSLA", waiting_for="market"),
    ]
    report = run_report(orders)
    assert report.waiting_for_market == {"AAPL": 2}
    assert report.as_dict()["waiting_for_market"] == {"AAPL": 2}
    text = render(report)
    assert "Waiting for the market to open" in text
    assert "AAPL" in text.split("Waiting for the market to open")[1]
