"""Limit prices, tick rounding, lot sizing, fees and FX: examples and properties."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.money import TOKEN_UNIT, USDT_UNIT
from trading.broker import Quote
from trading.exceptions import DepositTooSmall
from trading.pricing import (
    buy_cost,
    buy_limit_price,
    fee_for,
    is_on_tick,
    market_to_usdt_units,
    sell_limit_price,
    size_buy,
    size_sell,
    tick_size_for,
    usdt_units_to_market,
)


def quote(code: str, price: str, lot: int = 1) -> Quote:
    return Quote(
        code=code,
        price=Decimal(price),
        lot_size=lot,
        tick_size=tick_size_for(code, Decimal(price)),
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


def test_hk_limit_prices_follow_the_spread_table():
    q = quote("HK.00700", "380.00", 100)  # band 200-500: tick 0.20
    assert buy_limit_price(q, Decimal("0.005")) == Decimal("382.00")
    assert sell_limit_price(q, Decimal("0.005")) == Decimal("378.00")  # 378.1 down
    q = quote("HK.00005", "9.98", 400)  # 10.0299 crosses into the 0.02 band
    assert buy_limit_price(q, Decimal("0.005")) == Decimal("10.04")
    assert tick_size_for("HK.00005", Decimal("10.00")) == Decimal("0.01")
    assert tick_size_for("HK.00005", Decimal("10.02")) == Decimal("0.02")


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


def test_size_buy_examples():
    q = quote("US.AAPL", "190.00")
    limit = buy_limit_price(q, Decimal("0.005"))  # 190.95
    assert size_buy(usdt_units=1000 * USDT_UNIT, quote=q, limit_price=limit) == 5
    hk = quote("HK.00700", "380.00", 100)
    # 40,000 USDT = 312,000 HKD; one lot at 382 = 38,200 + 11.46 fee -> 8 lots.
    assert size_buy(usdt_units=40_000 * USDT_UNIT, quote=hk, limit_price=Decimal("382")) == 800


def test_deposit_too_small_says_why_and_how_much():
    hk = quote("HK.00700", "380.00", 100)
    with pytest.raises(DepositTooSmall) as err:
        size_buy(usdt_units=4_000 * USDT_UNIT, quote=hk, limit_price=Decimal("382"))
    assert "does not buy one lot of HK.00700" in err.value.reason
    assert err.value.required_usdt_units == market_to_usdt_units(
        "HK.00700", Decimal("38200") + Decimal("11.46")
    )
    with pytest.raises(DepositTooSmall):
        size_buy(
            usdt_units=190 * USDT_UNIT, quote=quote("US.AAPL", "190"), limit_price=Decimal("190.95")
        )


def test_size_sell_whole_lots_only():
    hk = quote("HK.00700", "380.00", 100)
    assert size_sell(token_units=250 * TOKEN_UNIT, quote=hk) == 200
    assert size_sell(token_units=99 * TOKEN_UNIT, quote=hk) == 0
    assert size_sell(token_units=TOKEN_UNIT * 7 // 2, quote=quote("US.AAPL", "190")) == 3


CODES = st.sampled_from([("US.AAPL", 1), ("US.PENNY", 1), ("HK.00700", 100), ("HK.00005", 400)])
PRICES = st.decimals(min_value=Decimal("0.05"), max_value=Decimal("4000"), places=3)
SLIPPAGE = st.decimals(min_value=Decimal("0"), max_value=Decimal("0.05"), places=4)


@settings(max_examples=400, deadline=None)
@given(code_lot=CODES, price=PRICES, slippage=SLIPPAGE)
def test_limit_prices_are_on_tick_and_within_one_tick_of_the_tolerance(code_lot, price, slippage):
    code, lot = code_lot
    q = quote(code, str(price), lot)
    buy, sell = buy_limit_price(q, slippage), sell_limit_price(q, slippage)
    assert is_on_tick(code, buy) and is_on_tick(code, sell)
    raw_buy, raw_sell = price * (1 + slippage), price * (1 - slippage)
    assert raw_buy <= buy < raw_buy + tick_size_for(code, raw_buy)
    assert sell <= raw_sell or sell == tick_size_for(code, price)
    assert sell > raw_sell - tick_size_for(code, raw_sell)


@settings(max_examples=500, deadline=None)
@given(
    code_lot=CODES,
    price=PRICES,
    slippage=SLIPPAGE,
    usdt_units=st.integers(min_value=0, max_value=2_000_000 * USDT_UNIT),
)
def test_sizing_never_spends_more_than_deposited_nor_buys_a_fractional_lot(
    code_lot, price, slippage, usdt_units
):
    code, lot = code_lot
    q = quote(code, str(price), lot)
    limit = buy_limit_price(q, slippage)
    try:
        qty = size_buy(usdt_units=usdt_units, quote=q, limit_price=limit)
    except DepositTooSmall as exc:
        # Refused only when one lot truly does not fit.
        assert exc.required_usdt_units is not None and exc.required_usdt_units > 0
        one_lot = buy_cost(code, Decimal(lot), limit)
        assert one_lot > usdt_units_to_market(code, usdt_units) or (
            market_to_usdt_units(code, one_lot) > usdt_units
        )
        return
    assert qty > 0 and qty % lot == 0 and qty == qty.to_integral_value()
    charged = market_to_usdt_units(code, buy_cost(code, qty, limit))
    assert charged <= usdt_units
    # Maximal: one more lot would not fit.
    more = buy_cost(code, qty + lot, limit)
    assert more > usdt_units_to_market(code, usdt_units) or (
        market_to_usdt_units(code, more) > usdt_units
    )


@settings(max_examples=300, deadline=None)
@given(code_lot=CODES, units=st.integers(min_value=0, max_value=10**13))
def test_fx_round_trip_never_creates_money(code_lot, units):
    code, _ = code_lot
    budget = usdt_units_to_market(code, units)
    assert market_to_usdt_units(code, budget) <= units
    assert market_to_usdt_units(code, budget, rounding=ROUND_DOWN) <= units


@settings(max_examples=300, deadline=None)
@given(code_lot=CODES, token_units=st.integers(min_value=0, max_value=10**6 * TOKEN_UNIT))
def test_sell_sizing_whole_lots_within_the_tokens(code_lot, token_units):
    code, lot = code_lot
    qty = size_sell(token_units=token_units, quote=quote(code, "10", lot))
    assert qty % lot == 0 and qty >= 0
    assert qty * TOKEN_UNIT <= token_units
    assert (qty + lot) * TOKEN_UNIT > token_units
