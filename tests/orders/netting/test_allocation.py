"""Property tests of the netting arithmetic: random cycles (buys only, sells only, crossed,
zero net, partial broker fills, carry-over over several cycles), exact to the base unit."""

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orders.netting.allocation import (
    TOKEN_UNITS_PER_SHARE,
    Buyer,
    FeeSchedule,
    Pricing,
    Seller,
    allocate_cycle,
    buyer_demand,
    max_cost,
    plan_cycle,
)

SHARE = TOKEN_UNITS_PER_SHARE
USDT = 10**6

prices = st.decimals(min_value=Decimal("0.5"), max_value=Decimal("2000"), places=2)
fx = st.sampled_from([Decimal(1), Decimal("7.80")])
fee_rates = st.sampled_from([Decimal(0), Decimal("0.001"), Decimal("0.0025")])
flats = st.sampled_from([0, 100_000])
buyers_st = st.lists(st.integers(min_value=0, max_value=50_000 * USDT), max_size=12)
sellers_st = st.lists(st.integers(min_value=1, max_value=200 * SHARE), max_size=12)


def _check(alloc, buyers, sellers, pricing, fees):
    assert alloc.inventory_after >= 0
    # Per cycle: tokens to buyers - tokens from sellers = broker fill + inventory change.
    assert alloc.tokens_to_buyers - alloc.tokens_from_sellers == (
        alloc.broker_units + alloc.inventory_before - alloc.inventory_after
    )
    for b, fill in zip(buyers, alloc.buyers, strict=True):
        assert fill.cost_units + fill.fee_units <= b.usdt_units
        value = pricing.value(fill.token_units)
        assert value <= fill.cost_units < value + 1  # charged rounds up, by < 1 unit
        assert fill.fee_units == fees.fee(fill.cost_units, prior_units=b.prior_cost_units) or (
            fill.token_units == 0 and fill.fee_units == 0
        )
    for s, fill in zip(sellers, alloc.sellers, strict=True):
        assert fill.token_units == s.token_units  # sellers are always filled in full
        value = pricing.value(fill.token_units)
        assert fill.proceeds_units <= value < fill.proceeds_units + 1  # paid rounds down
        assert 0 <= fill.payout_units <= fill.proceeds_units


@settings(max_examples=300, deadline=None)
@given(
    buy_units=buyers_st,
    sell_units=sellers_st,
    quote=prices,
    rate=fx,
    fee_rate=fee_rates,
    flat=flats,
    lot=st.sampled_from([1, 100]),
    inventory=st.integers(min_value=0, max_value=300 * SHARE),
    cap_lots=st.integers(min_value=1, max_value=3),
    target_lots=st.sampled_from([0, 0, 1, 2, 5]),
    filled_fraction=st.fractions(min_value=0, max_value=1),
    slip=st.decimals(min_value=Decimal("-0.02"), max_value=Decimal("0.02"), places=3),
)
def test_any_cycle_conserves_exactly(
    buy_units,
    sell_units,
    quote,
    rate,
    fee_rate,
    flat,
    lot,
    inventory,
    cap_lots,
    target_lots,
    filled_fraction,
    slip,
):
    fees = FeeSchedule(rate=fee_rate, flat_units=flat)
    buyers = [Buyer(i, u) for i, u in enumerate(buy_units)]
    sellers = [Seller(100 + i, t) for i, t in enumerate(sell_units)]
    cap = cap_lots * lot * SHARE
    quoted = Pricing(quote, rate)
    plan = plan_cycle(
        buyers=buyers,
        sellers=sellers,
        quote=quoted,
        fees=fees,
        lot_shares=lot,
        inventory_units=inventory,
        inventory_cap_units=cap,
        inventory_target_units=target_lots * lot * SHARE,
    )
    lot_units = lot * SHARE
    assert plan.broker_units % lot_units == 0
    # What the broker does not do, the cap and target ask (a buy stays a lot below the cap).
    crossed = inventory - plan.net_units
    target = max(min(target_lots * lot_units, cap - lot_units), 0)
    if plan.broker_units > 0:
        assert crossed < target <= crossed + plan.broker_units < target + lot_units
    elif plan.broker_units < 0:
        assert crossed > cap and crossed + plan.broker_units >= 0
        assert crossed + plan.broker_units <= cap or crossed + plan.broker_units < lot_units
    else:
        assert target <= crossed <= cap
    # The broker fills some whole lots of the order, at a price near the quote.
    lots = abs(plan.broker_units) // lot_units
    filled = (
        int(Fraction(lots) * filled_fraction) * lot_units * (1 if plan.broker_units > 0 else -1)
    )
    fill_price = (quote * (1 + slip)).quantize(Decimal("0.01")) if filled else quote
    pricing = Pricing(max(fill_price, Decimal("0.01")), rate)
    alloc = allocate_cycle(
        buyers=buyers,
        sellers=sellers,
        pricing=pricing,
        fees=fees,
        inventory_units=inventory,
        broker_units=filled,
    )
    _check(alloc, buyers, sellers, pricing, fees)
    # Pro rata: no buyer's allocation differs from its exact share by a whole unit.
    demands = [buyer_demand(b, pricing, fees) for b in buyers]
    available = sum(sell_units) + inventory + filled
    if sum(demands) > available:
        for d, fill in zip(demands, alloc.buyers, strict=True):
            assert abs(Fraction(d * available, sum(demands)) - fill.token_units) < 1
    else:
        assert [f.token_units for f in alloc.buyers] == demands
    # A full fill at the quote squares the book: inventory within its cap, or below a lot,
    # and at least the target a buy-ahead asked.
    if filled == plan.broker_units and pricing.price == quote:
        assert alloc.inventory_after <= max(cap, inventory) or alloc.inventory_after < lot_units
        if plan.broker_units > 0:
            assert alloc.inventory_after >= target


@given(
    units=st.integers(min_value=0, max_value=10**12),
    fee_rate=fee_rates,
    flat=flats,
    prior=st.sampled_from([0, 1, 999, 10**6 + 1, 123_456_789]),
)
def test_max_cost_is_the_largest_cost_the_deposit_covers(units, fee_rate, flat, prior):
    fees = FeeSchedule(rate=fee_rate, flat_units=flat)
    c = max_cost(units, fees, prior_units=prior)
    if c > 0:
        assert c + fees.fee(c, prior_units=prior) <= units
    assert (c + 1) + fees.fee(c + 1, prior_units=prior) > units


def _vault_quote_fee(amount: int, fees: FeeSchedule) -> int:
    """BroncoVault.quoteFee: ceil(amount x feeRatePpm / 1e6) + feeFlat (0 for no amount),
    written from the contract's integer expression rather than from FeeSchedule."""
    if amount == 0:
        return 0
    ppm = int(fees.rate * 1_000_000)
    return (amount * ppm + 1_000_000 - 1) // 1_000_000 + fees.flat_units


@settings(max_examples=300, deadline=None)
@given(
    amount=st.integers(min_value=1, max_value=20_000 * USDT),
    fee_rate=fee_rates,
    flat=flats,
    cycles=st.lists(
        st.tuples(prices, st.integers(min_value=0, max_value=1_000)), min_size=1, max_size=12
    ),
)
def test_a_deposit_filled_over_many_cycles_never_pays_more_fee_than_the_vault_takes(
    amount, fee_rate, flat, cycles
):
    """Whatever the cycles (prices, partial fills in token thousandths of a share), the fees
    of one deposit add up to the schedule on its total cost, rounded once, and so never
    exceed the vault's quoteFee(amount) (FeeAboveSchedule). Rounding up in each cycle broke
    this by up to a unit per cycle."""
    fees = FeeSchedule(rate=fee_rate, flat_units=flat)
    buyer = Buyer(1, amount)
    paid = 0
    for price, thousandths in cycles:
        alloc = allocate_cycle(
            buyers=[buyer],
            sellers=[],
            pricing=Pricing(price, Decimal(1)),
            fees=fees,
            inventory_units=0,
            broker_units=thousandths * SHARE // 1000,
        )
        fill = alloc.buyers[0]
        assert fill.cost_units + fill.fee_units <= buyer.usdt_units
        paid += fill.fee_units
        buyer = Buyer(
            1,
            buyer.usdt_units - fill.cost_units - fill.fee_units,
            prior_cost_units=buyer.prior_cost_units + fill.cost_units,
        )
    assert paid == fees.total(buyer.prior_cost_units)
    assert paid <= _vault_quote_fee(amount, fees)


def test_four_one_unit_cycles_at_a_quarter_percent_pay_one_unit_of_fee_not_four():
    """The case the property above guards: 0.25 % of 1 USDT base unit a cycle rounds up to a
    unit each time; on the total it is one unit."""
    fees = FeeSchedule(rate=Decimal("0.0025"))
    assert sum(fees.fee(1, prior_units=p) for p in range(4)) == fees.total(4) == 1
    assert _vault_quote_fee(4, fees) == 1


def test_all_crossed_sends_nothing_to_the_broker():
    fees = FeeSchedule(rate=Decimal(0))
    quote = Pricing(Decimal(100), Decimal(1))
    buyers = [Buyer(1, 300 * USDT)]  # 3 shares
    sellers = [Seller(2, 3 * SHARE)]
    plan = plan_cycle(
        buyers=buyers,
        sellers=sellers,
        quote=quote,
        fees=fees,
        lot_shares=1,
        inventory_units=0,
        inventory_cap_units=SHARE,
    )
    assert plan.broker_units == 0
    alloc = allocate_cycle(
        buyers=buyers,
        sellers=sellers,
        pricing=quote,
        fees=fees,
        inventory_units=0,
        broker_units=0,
    )
    assert alloc.buyers[0].token_units == 3 * SHARE and alloc.inventory_after == 0
    assert alloc.sellers[0].proceeds_units == 300 * USDT


def test_a_small_deposit_buys_a_fraction_and_the_lot_remainder_goes_to_inventory():
    """20 USDT into a 180 USD stock: about 0.11 share; one share is bought, the rest is
    inventory."""
    fees = FeeSchedule(rate=Decimal(0))
    quote = Pricing(Decimal(180), Decimal(1))
    buyers = [Buyer(1, 20 * USDT)]
    plan = plan_cycle(
        buyers=buyers,
        sellers=[],
        quote=quote,
        fees=fees,
        lot_shares=1,
        inventory_units=0,
        inventory_cap_units=5 * SHARE,
    )
    assert plan.broker_units == SHARE
    alloc = allocate_cycle(
        buyers=buyers,
        sellers=[],
        pricing=quote,
        fees=fees,
        inventory_units=0,
        broker_units=SHARE,
    )
    got = alloc.buyers[0].token_units
    assert got == 111_111_111_111_111_111  # 20/180 share, floor
    assert alloc.inventory_after == SHARE - got
    assert alloc.buyers[0].cost_units == 20 * USDT


def test_inventory_covers_a_small_demand_without_the_broker():
    fees = FeeSchedule(rate=Decimal(0))
    quote = Pricing(Decimal(180), Decimal(1))
    plan = plan_cycle(
        buyers=[Buyer(1, 20 * USDT)],
        sellers=[],
        quote=quote,
        fees=fees,
        lot_shares=1,
        inventory_units=SHARE // 2,
        inventory_cap_units=5 * SHARE,
    )
    assert plan.broker_units == 0


def test_inventory_above_its_cap_is_sold_in_whole_lots():
    fees = FeeSchedule(rate=Decimal(0))
    quote = Pricing(Decimal(10), Decimal(1))
    plan = plan_cycle(
        buyers=[],
        sellers=[Seller(1, 250 * SHARE)],
        quote=quote,
        fees=fees,
        lot_shares=100,
        inventory_units=30 * SHARE,
        inventory_cap_units=100 * SHARE,
    )
    # 280 shares to hold against a cap of 100: sell 2 lots, keep 80.
    assert plan.broker_units == -200 * SHARE


def test_a_buy_ahead_tops_the_inventory_up_to_its_target_in_whole_lots():
    """20 USDT into a 180 USD stock with 10 shares to keep: 11 shares go to the broker
    (0.11 share for the buyer, the rest is the target plus the lot's remainder)."""
    fees = FeeSchedule(rate=Decimal(0))
    quote = Pricing(Decimal(180), Decimal(1))
    plan = plan_cycle(
        buyers=[Buyer(1, 20 * USDT)],
        sellers=[],
        quote=quote,
        fees=fees,
        lot_shares=1,
        inventory_units=0,
        inventory_cap_units=50 * SHARE,
        inventory_target_units=10 * SHARE,
    )
    assert plan.broker_units == 11 * SHARE
    # At the target already: nothing goes to the broker.
    plan = plan_cycle(
        buyers=[Buyer(1, 20 * USDT)],
        sellers=[],
        quote=quote,
        fees=fees,
        lot_shares=1,
        inventory_units=12 * SHARE,
        inventory_cap_units=50 * SHARE,
        inventory_target_units=10 * SHARE,
    )
    assert plan.broker_units == 0


def test_a_buy_ahead_target_stays_a_lot_below_the_cap():
    """A target at the cap would make the lot's remainder pass it, and the next cycle
    would sell it back: the target is kept a lot below."""
    fees = FeeSchedule(rate=Decimal(0))
    plan = plan_cycle(
        buyers=[Buyer(1, 100 * USDT)],
        sellers=[],
        quote=Pricing(Decimal(10), Decimal(1)),
        fees=fees,
        lot_shares=100,
        inventory_units=0,
        inventory_cap_units=300 * SHARE,
        inventory_target_units=1_000 * SHARE,
    )
    # 10 shares wanted, 200 kept (300 - a lot): 210 -> 3 lots, 290 left, under the cap.
    assert plan.broker_units == 300 * SHARE


def test_carry_over_over_several_cycles_conserves_each_deposit():
    """A deposit filled partly in each of three cycles spends no more than it brought."""
    fees = FeeSchedule(rate=Decimal("0.001"), flat_units=50_000)
    buyer = Buyer(1, 10_000 * USDT)
    spent = 0
    for broker_lots in (10, 20, 1_000):
        pricing = Pricing(Decimal("99.50"), Decimal(1))
        alloc = allocate_cycle(
            buyers=[buyer],
            sellers=[],
            pricing=pricing,
            fees=fees,
            inventory_units=0,
            broker_units=broker_lots * SHARE,
        )
        fill = alloc.buyers[0]
        spent += fill.cost_units + fill.fee_units
        buyer = Buyer(
            1,
            buyer.usdt_units - fill.cost_units - fill.fee_units,
            prior_cost_units=buyer.prior_cost_units + fill.cost_units,
        )
    assert spent + buyer.usdt_units == 10_000 * USDT
    assert buyer.usdt_units < 100 * USDT  # the third cycle had enough to fill the rest


def test_a_broker_selling_more_than_there_is_is_refused():
    with pytest.raises(ValueError):
        allocate_cycle(
            buyers=[],
            sellers=[Seller(1, SHARE)],
            pricing=Pricing(Decimal(1), Decimal(1)),
            fees=FeeSchedule(rate=Decimal(0)),
            inventory_units=0,
            broker_units=-2 * SHARE,
        )
