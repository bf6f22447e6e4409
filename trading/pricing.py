"""Quote -> limit price, fees and FX. Pure functions over Decimal, no I/O.

Rounding, and why each direction is safe:
- Limit prices: a BUY rounds *up* to the tick, a SELL rounds *down*. The order stays at least
  as marketable as the configured tolerance promises (rounding the other way would quietly
  tighten it and leave more orders unfilled). The tick is the exchange's own figure: the
  snapshot's `price_spread` (`Quote.tick_size`), never a table of Bronco's. Where the
  rounded price crosses into a band with a coarser step (HKEX's spread table), the Futu
  adapter's `adjust_limit` lets OpenD move it to the next valid price in the same direction
  (`FUTU_PRICE_ADJUST_LIMIT`, `trading.futu.execution`).
- USDT -> market currency (a budget we may spend) rounds *down* to the cent.
- Market currency -> USDT base units rounds *up* when we charge the user (cost, fees) and
  *down* when we pay the user (proceeds): rounding always favours the vault, by < 1 unit.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_UP, Decimal

from django.conf import settings

from core.money import USDT_UNIT
from trading.broker import Quote

CENT = Decimal("0.01")


def market_of(code: str) -> str:
    """'US.AAPL' -> 'US'."""
    market, sep, _ = code.partition(".")
    if not sep or not market:
        raise ValueError(f"not a Futu code (MARKET.SYMBOL): {code!r}")
    return market.upper()


def currency_of(code: str) -> str:
    market = market_of(code)
    try:
        return settings.TRADING_MARKET_CURRENCY[market]
    except KeyError:
        raise ValueError(f"no currency configured for market {market} ({code})") from None


def _round_to_tick(quote: Quote, raw: Decimal, rounding: str) -> Decimal:
    tick = quote.tick_size
    if tick <= 0:
        raise ValueError(f"{quote.code}: the snapshot gave no price spread")
    return ((raw / tick).to_integral_value(rounding=rounding) * tick).normalize()


def buy_limit_price(quote: Quote, slippage: Decimal | None = None) -> Decimal:
    """quote x (1 + slippage), rounded up to the tick (see the module docstring)."""
    slip = settings.TRADING_SLIPPAGE if slippage is None else slippage
    if quote.price <= 0 or slip < 0:
        raise ValueError("price must be positive and slippage non-negative")
    return _quantized(_round_to_tick(quote, quote.price * (1 + slip), ROUND_CEILING))


def sell_limit_price(quote: Quote, slippage: Decimal | None = None) -> Decimal:
    """quote x (1 - slippage), rounded down to the tick, never below one tick."""
    slip = settings.TRADING_SLIPPAGE if slippage is None else slippage
    if quote.price <= 0 or not 0 <= slip < 1:
        raise ValueError("price must be positive and slippage in [0, 1)")
    price = _round_to_tick(quote, quote.price * (1 - slip), ROUND_FLOOR)
    if price <= 0:
        price = quote.tick_size
    return _quantized(price)


def _quantized(price: Decimal) -> Decimal:
    """Prices carry at most 4 decimals (US sub-dollar tick); keep a plain exponent."""
    return price.quantize(Decimal("0.0001"))


def fee_for(code: str, qty: Decimal, price: Decimal) -> Decimal:
    """Broker fee in the market currency: max(notional x rate, minimum), up to the cent.
    Zero for a zero quantity (an unfilled order costs nothing)."""
    if qty <= 0:
        return Decimal("0.00")
    rate, minimum = settings.TRADING_FEES[market_of(code)]
    fee = max(qty * price * rate, minimum)
    return fee.quantize(CENT, rounding=ROUND_UP)


def fx_rate(code: str) -> Decimal:
    """Units of the code's market currency per 1 USDT."""
    return settings.TRADING_FX_RATES[currency_of(code)]


def usdt_units_to_market(code: str, units: int) -> Decimal:
    """USDT base units -> market currency we may spend, rounded *down* to the cent."""
    if units < 0:
        raise ValueError("units must be non-negative")
    amount = Decimal(int(units)) * fx_rate(code) / USDT_UNIT
    return amount.quantize(CENT, rounding=ROUND_DOWN)


def market_to_usdt_units(code: str, amount: Decimal, *, rounding: str = ROUND_UP) -> int:
    """Market currency -> USDT base units. Rounds *up* by default (an amount we charge the
    user: cost, fees); pass rounding=ROUND_DOWN for an amount we pay out (proceeds)."""
    if isinstance(amount, float):
        raise TypeError("money is never a float")
    if rounding not in (ROUND_UP, ROUND_DOWN):
        raise ValueError("rounding is ROUND_UP (charge) or ROUND_DOWN (payout)")
    units = Decimal(amount) * USDT_UNIT / fx_rate(code)
    return int(units.to_integral_value(rounding=rounding))


__all__ = [
    "buy_limit_price",
    "currency_of",
    "fee_for",
    "fx_rate",
    "market_of",
    "market_to_usdt_units",
    "sell_limit_price",
    "usdt_units_to_market",
]
