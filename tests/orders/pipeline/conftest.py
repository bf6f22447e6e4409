"""The fast layer of the pipeline: each stage driven directly against PostgreSQL, Redis and
fakes of Bronco's own protocols (tests.fakes: a broker, a settlement sender). No anvil, no
OpenD, no Vault: `make test-fast` runs these."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from orders.models import Order
from tests.factories import OrderFactory


@pytest.fixture(autouse=True)
def _fast(settings):
    settings.ORDER_RETRY_SECONDS = 5.0
    settings.ORDER_POLL_INTERVAL_SECONDS = 1.0
    settings.ORDER_MIN_USDT = Decimal("1")


def past_deadline(order: Order) -> Order:
    Order.objects.filter(pk=order.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    order.refresh_from_db()
    return order


def validated(**kwargs) -> Order:  # type: ignore[no-untyped-def]
    """A deposit validated at 190.95 for 5 shares of US.AAPL (1,000 USDT)."""
    return OrderFactory(qty=Decimal(5), price=Decimal("190.95"), **kwargs)
