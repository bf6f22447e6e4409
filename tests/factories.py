"""factory-boy factories for Bronco's models."""

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from orders.models import Cycle, CycleStatus, Order, OrderStatus, OrderType


class OrderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Order

    order_type = OrderType.BUY
    status = OrderStatus.PENDING
    chain_id = 31337
    onchain_id = factory.Sequence(lambda n: n + 1)
    chain_tx_hash = factory.Sequence(lambda n: "0x" + f"{n:064x}")
    log_index = 0
    user_address = "0x" + "ab" * 20
    symbol = "AAPL"
    stock_code = "US.AAPL"
    usdt_amount = 1_000 * 10**6


class CycleFactory(factory.django.DjangoModelFactory):
    """A netting cycle of AAPL at 100 USD a share, lots of one, no fee, placed."""

    class Meta:
        model = Cycle

    symbol = "AAPL"
    stock_code = "US.AAPL"
    status = CycleStatus.PLACED
    quote_price = Decimal(100)
    ccy_per_usdt = Decimal(1)
    lot_size = 1
    fee_rate = Decimal(0)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")
    password = factory.django.Password("pw-for-tests-only")
    is_staff = True
