"""factory-boy factories for Bronco's models."""

import factory
from django.contrib.auth import get_user_model

from orders.models import Order, OrderStatus, OrderType


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


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")
    password = factory.django.Password("pw-for-tests-only")
    is_staff = True
