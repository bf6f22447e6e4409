"""`reconcile`'s check of users' terms and fees (`ops.reconciliation.terms`) against orders
the real pipeline filled and the vault settled (anvil, the OpenD simulator): clean, then
each invariant caught on a tampered row (the vault's own arithmetic is the reference)."""

import pytest
from django.db.models import F
from django.utils import timezone

from core.money import USDT_UNIT
from ops.reconciliation import Reconciliation
from ops.reconciliation.terms import check_terms_and_fees, read_fee_schedules
from orders.models import Allocation, Order, OrderStatus
from tests.fixtures.pipeline import drive
from tests.orders.test_pipeline import stack  # noqa: F401
from tests.orders.test_pipeline_price_bounds import _limit_deposit

pytestmark = [pytest.mark.chain, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def _terms(orders) -> Reconciliation:
    result = Reconciliation()
    check_terms_and_fees(result, orders)
    return result


def _text(result) -> str:
    return "\n".join(str(d) for d in result.discrepancies)


@pytest.fixture
def filled(stack, chain_user):  # noqa: F811
    """A limit deposit bounded at 105 USDT a share, filled at 100 and settled by the vault."""
    contracts, _sim = stack
    order = _limit_deposit(chain_user(2), contracts, "AAPL", 300 * USDT_UNIT, 105 * USDT_UNIT)
    order = drive(order.pk)
    assert order.status == OrderStatus.EXECUTED and order.fees_usdt > 0
    return order


def test_a_settled_limit_deposit_keeps_its_terms_and_fees(filled):
    result = _terms([filled])
    assert result.ok, _text(result)
    # The vault's schedule is read from the chain and the fee is within it.
    schedule = read_fee_schedules().at(None)
    assert 0 < filled.fees_usdt <= schedule.quote_fee(filled.usdt_amount)


def test_a_tampered_fee_is_caught(filled):
    allocation = Allocation.objects.get(order=filled)
    Allocation.objects.filter(pk=allocation.pk).update(fee_units=F("fee_units") + 1)
    text = _text(_terms([filled]))
    assert f"cycle {allocation.cycle_id} charged a fee of {allocation.fee_units + 1}" in text
    assert f"the published schedule (0.001000 + 0) on {allocation.usdt_units} gives" in text
    Allocation.objects.filter(pk=allocation.pk).update(fee_units=F("fee_units") - 1)
    assert _terms([filled]).ok

    Order.objects.filter(pk=filled.pk).update(fees_usdt=F("fees_usdt") + 1)
    text = _text(_terms([Order.objects.get(pk=filled.pk)]))
    assert f"fee {filled.fees_usdt + 1} USDT units != {filled.fees_usdt} charged" in text

    Order.objects.filter(pk=filled.pk).update(fees_usdt=10**9)
    text = _text(_terms([Order.objects.get(pk=filled.pk)]))
    assert "above the vault's quoteFee(300000000)" in text


def test_a_trade_outside_the_bound_or_after_the_expiry_is_caught(filled):
    allocation = Allocation.objects.get(order=filled)
    # Bound one base unit below the price the cycle paid per share.
    per_share = allocation.usdt_units * 10**18 // allocation.token_units
    Order.objects.filter(pk=filled.pk).update(price_bound=per_share - 2)
    text = _text(_terms([Order.objects.get(pk=filled.pk)]))
    assert f"above its bound {per_share - 2}" in text

    Order.objects.filter(pk=filled.pk).update(
        price_bound=per_share, expires_at=allocation.cycle.allocated_at - timezone.timedelta(1)
    )
    text = _text(_terms([Order.objects.get(pk=filled.pk)]))
    assert "bound" not in text
    assert f"cycle {allocation.cycle_id} traded it at" in text and "after its expiry" in text


def test_the_schedule_in_force_at_a_settlement_block():
    from ops.reconciliation.terms import FeeScheduleHistory, VaultFeeSchedule

    now = VaultFeeSchedule(rate_ppm=3000, flat_units=0)
    first = VaultFeeSchedule(rate_ppm=1000, flat_units=0)
    second = VaultFeeSchedule(rate_ppm=2000, flat_units=50)
    history = FeeScheduleHistory(changes=((10, first), (20, second)), current=now)
    assert [history.at(b) for b in (None, 5, 10, 19, 20, 99)] == [
        now,
        now,  # before the first recorded change: what the vault holds now
        first,
        first,
        second,
        second,
    ]
    assert second.quote_fee(0) == 0
    assert second.quote_fee(1) == 1 + 50  # rounded up, as the contract does
    assert second.quote_fee(1_000_000) == 2000 + 50
