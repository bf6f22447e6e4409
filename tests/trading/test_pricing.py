"""Limit prices on the snapshot's spread, fees and FX: examples and properties."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.money import USDT_UNIT
from trading.broker import Quote
from trading.opend_sim.spreads import adjusted_price, is_valid_price, spread_at
from trading.pricing import (
    buy_limit_price,
    fee_for,
    market_to_usdt_units,
    sell_limit_price,
    usdt_units_to_market,
)


def quote(code: str, price: str, lot: int = 1) -> Quote:
    """A snapshot as the exchange would publish it: its spread from the exchange's table
    (the simulator's, `trading.opend_sim.spreads`); Bronco reads only `tick_size`."""
    return Quote(
        code=code,
        price=Decimal(price),
        lot_size=lot,
        tick_size=spread_at(code, Decimal(price)),
        currency="HKD" if code.startswith("HK") else "USD",
        market_open=True,
    )


def test_limit_prices_round_outward_to_the_tick():
    q = quote("US.AAPL", "190.00")
    assert buy_limit_price(q, Decimal("0.005")) == Decimal("190.95")
    assert sell_limit_price(q, Decimal("0.005")) == Decimal("189.05")
    q = quote("US.AAPL", "190.01")  # 190.96005 -> up to 190.97; 189.05995 -> down to 189.05
    assert buy_limit_price(q, Decimal("0.005")) == Decimal("190.97")
    assert sell_limit_price(q, Decimal("0.005")) == Decimal("189.05")


def test_hk_limit_prices_round_on_the_snapshot_spread():
    q = quote("HK.00700", "380.00", 100)  # band 200-500: spread 0.20
    assert buy_limit_price(q, Decimal("0.005")) == Decimal("382.00")
    assert sell_limit_price(q, Decimal("0.005")) == Decimal("378.00")  # 378.1 down
    # Since HKEX's 2025 reduction, 10-20 trades in 0.01 (no longer 0.02): 10.0299 -> 10.03.
    q = quote("HK.00005", "9.98", 400)
    assert buy_limit_price(q, Decimal("0.005")) == Decimal("10.03")
    # A spread Bronco never saw is the snapshot's to give: a different figure, a different price.
    odd = Quote("HK.00005", Decimal("9.98"), 400, Decimal("0.05"), "HKD", True)
    assert buy_limit_price(odd, Decimal("0.005")) == Decimal("10.05")
    with pytest.raises(ValueError, match="spread"):
        buy_limit_price(Quote("HK.1", Decimal("9"), 1, Decimal(0), "HKD", True))


def test_us_sub_dollar_tick():
    q = quote("US.XYZ", "0.5123")
    assert buy_limit_price(q, Decimal("0.005")) == Decimal("0.5149")


def test_fee_is_rate_with_a_minimum_rounded_up():
    assert fee_for("US.AAPL", Decimal(1), Decimal("190")) == Decimal("0.99")
    assert fee_for("US.AAPL", Decimal(100), Decimal("190.01")) == Decimal("9.51")  # 9.5005
    assert fee_for("HK.00700", Decimal(100), Decimal("382")) == Decimal("11.46")
    assert fee_for("US.AAPL", Decimal(0), Decimal("190")) == Decimal("0")


def test_fx_rounding_favours_the_vault():
    # 100 USDT -> 780.00 HKD budget; 780.01 HKD charged -> 100.001283 USDT rounded up.
    assert usdt_units_to_market("HK.00700", 100 * USDT_UNIT) == Decimal("780.00")
    assert market_to_usdt_units("HK.00700", Decimal("780.01")) == 100_001_283
    assert market_to_usdt_units("HK.00700", Decimal("780.01"), rounding=ROUND_DOWN) == (100_001_282)
    assert market_to_usdt_units("US.AAPL", Decimal("1.5")) == 1_500_000
    with pytest.raises(TypeError):
        market_to_usdt_units("US.AAPL", 1.5)  # type: ignore[arg-type]


CODES = st.sampled_from([("US.AAPL", 1), ("US.PENNY", 1), ("HK.00700", 100), ("HK.00005", 400)])
PRICES = st.decimals(min_value=Decimal("0.05"), max_value=Decimal("4000"), places=3)
SLIPPAGE = st.decimals(min_value=Decimal("0"), max_value=Decimal("0.05"), places=4)


@settings(max_examples=400, deadline=None)
@given(code_lot=CODES, price=PRICES, slippage=SLIPPAGE)
def test_limit_prices_are_on_tick_and_within_one_tick_of_the_tolerance(code_lot, price, slippage):
    code, lot = code_lot
    q = quote(code, str(price), lot)
    buy, sell = buy_limit_price(q, slippage), sell_limit_price(q, slippage)
    raw_buy, raw_sell = price * (1 + slippage), price * (1 - slippage)
    assert raw_buy <= buy < raw_buy + q.tick_size
    assert sell <= raw_sell or sell == q.tick_size
    assert sell > raw_sell - q.tick_size
    # On the snapshot's grid; where that crossed into a coarser band, the adjustment the
    # adapter asks for (FUTU_PRICE_ADJUST_LIMIT 2%: buy up, sell down) reaches a valid
    # price without refusal, within one step of the band it lands in.
    adj_buy = adjusted_price(code, buy, Decimal("0.02"))
    adj_sell = adjusted_price(code, sell, Decimal("-0.02"))
    assert adj_buy is not None and is_valid_price(code, adj_buy)
    assert buy <= adj_buy < buy + spread_at(code, adj_buy)
    assert adj_sell is not None and is_valid_price(code, adj_sell)
    assert sell - spread_at(code, sell) < adj_sell <= sell


@settings(max_examples=300, deadline=None)
@given(code_lot=CODES, units=st.integers(min_value=0, max_value=10**13))
def test_fx_round_trip_never_creates_money(code_lot, units):
    code, _ = code_lot
    budget = usdt_units_to_market(code, units)
    assert market_to_usdt_units(code, budget) <= units
    assert market_to_usdt_units(code, budget, rounding=ROUND_DOWN) <= units
