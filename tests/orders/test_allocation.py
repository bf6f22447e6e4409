"""Property tests: allocation conserves money to the base unit and never overpays."""

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from core.money import TOKEN_UNIT, shares_to_token_units
from orders.allocation import allocate_buy, allocate_sell

prices = st.decimals(min_value="0.01", max_value="5000", places=3)
rates = st.sampled_from([Decimal(1), Decimal("7.8"), Decimal("7.7531")])
fees = st.decimals(min_value="0", max_value="50", places=2)


@given(
    usdt_in=st.integers(min_value=0, max_value=10**13),
    qty=st.integers(min_value=0, max_value=10_000),
    price=prices,
    fee=fees,
    rate=rates,
)
def test_buy_conserves_and_never_charges_more_than_brought(usdt_in, qty, price, fee, rate):
    s = allocate_buy(
        usdt_in=usdt_in, filled_qty=Decimal(qty), avg_price=price, fee=fee, ccy_per_usdt=rate
    )
    assert s.cost_usdt + s.fees_usdt + s.refund_usdt == usdt_in
    assert min(s.cost_usdt, s.fees_usdt, s.refund_usdt) >= 0
    assert s.tokens_minted == qty * TOKEN_UNIT
    if qty == 0:
        assert s.refund_usdt == usdt_in


@given(
    shares=st.decimals(min_value="0", max_value="10000", places=6),
    fill_fraction=st.fractions(min_value=0, max_value=1),
    price=prices,
    fee=fees,
    rate=rates,
)
def test_sell_conserves_tokens_and_pays_at_most_proceeds(shares, fill_fraction, price, fee, rate):
    tokens_in = shares_to_token_units(shares)
    filled = Decimal(int(shares * fill_fraction.numerator / fill_fraction.denominator))
    s = allocate_sell(
        tokens_in=tokens_in, filled_qty=filled, avg_price=price, fee=fee, ccy_per_usdt=rate
    )
    assert s.tokens_returned + shares_to_token_units(filled) == tokens_in
    assert s.payout_usdt + s.fees_usdt == s.cost_usdt
    assert s.payout_usdt >= 0
    assert s.payout_usdt <= filled * price / rate * 10**6


def test_buy_rounding_favours_the_vault():
    # 3 shares at 33.333333 USD = 99.999999 USD exactly; fee 0.0000001 rounds up one unit.
    s = allocate_buy(
        usdt_in=100_000_000,
        filled_qty=Decimal(3),
        avg_price=Decimal("33.333333"),
        fee=Decimal("0.0000001"),
        ccy_per_usdt=Decimal(1),
    )
    assert s.cost_usdt == 99_999_999
    assert s.fees_usdt == 1
    assert s.refund_usdt == 0
