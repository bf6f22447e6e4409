"""orders.selectors: the one formula of what a deposit still has, shared by the netting
cycles and manual refunds."""

from orders.models import Order
from orders.netting import cycles
from orders.selectors import order_usdt_remaining
from refunds.services.order_checks import order_remaining


def _order(**units: int) -> Order:
    return Order(
        order_type="BUY",
        usdt_amount=units.get("usdt", 1_000_000_000),
        manual_refund_usdt=units.get("manual", 0),
        cost_usdt=units.get("cost", 0),
        fees_usdt=units.get("fees", 0),
    )


def test_remaining_is_the_deposit_less_manual_refunds_cost_and_fees():
    order = _order(usdt=1_000_000_000, manual=100_000_000, cost=500_000_001, fees=500_000)
    assert order_usdt_remaining(order) == 399_499_999


def test_cycles_and_refunds_use_the_same_formula():
    order = _order(usdt=777_000_000, manual=1, cost=2, fees=3)
    assert order_remaining(order) == order_usdt_remaining(order) == 776_999_994
    assert cycles._participant(order).usdt_units == 776_999_994
