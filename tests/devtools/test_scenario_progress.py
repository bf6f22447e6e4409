"""The scenario driver's progress counts this run's orders only. Vault ids are hashes, not a
counter, and the scenario's users are the same on every run (`user_key(seed, i)`): on a kept
database (a second `make run`) their earlier orders must not make this run look finished."""

import time

import pytest
from django.conf import settings

from devtools.scenario import DriverState, ScenarioDriver, Sent
from orders.models import Order, OrderStatus
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db

USER = "0x" + "Ab" * 20
HIGH_ID = 2**255  # an earlier run's id above this run's: ids are uniform 256-bit hashes


def _driver() -> ScenarioDriver:
    driver = object.__new__(ScenarioDriver)  # no chain: only the progress is under test
    driver.state = DriverState()
    driver.addresses = [USER]
    driver._lower_addresses = [USER.lower()]
    return driver


def test_earlier_runs_orders_of_the_same_users_are_not_this_runs():
    for i in range(3):
        OrderFactory(
            user_address=USER.lower(),
            onchain_id=HIGH_ID + i,
            status=OrderStatus.EXECUTED,
            chain_id=settings.CHAIN_ID,
        )
    driver = _driver()
    assert driver.status_counts()[OrderStatus.EXECUTED] == 0  # nothing sent yet
    time.sleep(0.01)
    driver.state.started_at = time.time()
    for vault_id in (10, 20):  # this run sent two; one has its order, settled
        driver.state.record(Sent("deposit", USER, "AAPL", 1, "0x", vault_id, time.time()))
    OrderFactory(
        user_address=USER, onchain_id=10, status=OrderStatus.EXECUTED, chain_id=settings.CHAIN_ID
    )

    counts = driver.status_counts()

    assert counts[OrderStatus.EXECUTED] == 1
    assert not driver.finished(counts)
    OrderFactory(
        user_address=USER, onchain_id=20, status=OrderStatus.SETTLING, chain_id=settings.CHAIN_ID
    )
    assert not driver.finished()
    Order.objects.filter(onchain_id=20).update(status=OrderStatus.EXECUTED)
    assert driver.finished()
