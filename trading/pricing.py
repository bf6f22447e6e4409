"""Quote -> limit price, lot sizing, fees and FX. Pure functions over Decimal, no I/O.

Rounding, and why each direction is safe:
- Limit prices: a BUY rounds *up* to the tick, a SELL rounds *down*. The order stays at least
  as marketable as the configured tolerance promises (rounding the other way would quietly
  tighten it and leave more orders unfilled). Money stays safe regardless, because sizing
  uses the rounded limit: the worst case is a full fill at exactly that limit.
- Quantities: always whole lots, rounded down (never buy what the deposit cannot pay for).
- USDT -> market currency (a budget we may spend) rounds *down* to the cent.
- Market currency -> USDT base units rounds *up* when we charge the user (cost, fees) and
  *down* when we pay the user (proceeds): rounding always favours the vault, by < 1 unit.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_UP, Decimal

from django.conf import settings

from core.money import USDT_UNIT, token_units_to_shares
from trading.broker import Quote
from trading.exceptions import DepositTooSmall

CENT = Decimal("0.01")

# HKEX spread table (part A): (upper bound of the band, tick inside it). A price exactly on
# an upper bound belongs to that band.
_HK_SPREADS: tuple[tuple[Decimal, Decimal], ...] = tuple(
    (Decimal(upper), Decimal(tick))
    for upper, tick in (
        ("0.25", "0.001"),
        ("0.50", "0.005"),
        ("10.00", "0.010"),
        ("20.00", "0.020"),
        ("100.00", "0.050"),
        ("200.00", "0.100"),
        ("500.00", "0.200"),
        ("1000.00", "0.500"),
        ("2000.00", "1.000"),
        ("5000.00", "2.000"),
        ("9995.00", "5.000"),
    )
)


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


def tick_size_for(code: str, price: Decimal) -> Decimal:
    """The exchange's minimum price step at `price` (US: 0.01 from $1, else 0.0001)."""
    market = market_of(code)
    if market == "HK":
        for upper, tick in _HK_SPREADS:
            if price <= upper:
                return tick
        return _HK_SPREADS[-1][1]
    if market == "US":
        return Decimal("0.01") if price >= 1 else Decimal("0.0001")
    return CENT


def is_on_tick(code: str, price: Decimal) -> bool:
    return price > 0 and price % tick_size_for(code, price) == 0


def _round_to_tick(code: str, raw: Decimal, rounding: str) -> Decimal:
    tick = tick_size_for(code, raw)
    return ((raw / tick).to_integral_value(rounding=rounding) * tick).normalize()


def buy_limit_price(quote: Quote, slippage: Decimal | None = None) -> Decimal:
    """quote x (1 + slippage), rounded up to the tick (see the module docstring)."""
    slip = settings.TRADING_SLIPPAGE if slippage is None else slippage
    if quote.price <= 0 or slip < 0:
        raise ValueError("price must be positive and slippage non-negative")
    return _quantized(_round_to_tick(quote.code, quote.price * (1 + slip), ROUND_CEILING))


def sell_limit_price(quote: Quote, slippage: Decimal | None = None) -> Decimal:
    """quote x (1 - slippage), rounded down to the tick, never below one tick."""
    slip = settings.TRADING_SLIPPAGE if slippage is None else slippage
    if quote.price <= 0 or not 0 <= slip < 1:
        raise ValueError("price must be positive and slippage in [0, 1)")
    price = _round_to_tick(quote.code, quote.price * (1 - slip), ROUND_FLOOR)
    if price <= 0:
        price = tick_size_for(quote.code, quote.price)
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


def buy_cost(code: str, qty: Decimal, price: Decimal) -> Decimal:
    """Worst-case cost of buying `qty` at `price`: notional plus fee, market currency."""
    return qty * price + fee_for(code, qty, price)


def size_buy(*, usdt_units: int, quote: Quote, limit_price: Decimal) -> Decimal:
    """Whole lots the deposit pays for at `limit_price` after fees.

    Guarantees `market_to_usdt_units(code, buy_cost(code, qty, limit_price)) <= usdt_units`
    and `qty % lot_size == 0`. Raises DepositTooSmall (with the amount one lot needs) when
    not even one lot fits.
    """
    code, lot = quote.code, Decimal(quote.lot_size)
    if lot <= 0 or limit_price <= 0:
        raise ValueError("lot size and limit price must be positive")
    budget = usdt_units_to_market(code, usdt_units)
    rate, minimum = settings.TRADING_FEES[market_of(code)]
    lot_value = lot * limit_price
    lots = min(
        (budget / (lot_value * (1 + rate))).to_integral_value(rounding=ROUND_FLOOR),
        ((budget - minimum) / lot_value).to_integral_value(rounding=ROUND_FLOOR),
    )
    lots = max(int(lots), 0)

    def fits(n: int) -> bool:
        cost = buy_cost(code, n * lot, limit_price)
        return cost <= budget and market_to_usdt_units(code, cost) <= usdt_units

    while lots > 0 and not fits(lots):
        lots -= 1
    while fits(lots + 1):
        lots += 1
    if lots == 0:
        need = market_to_usdt_units(code, buy_cost(code, lot, limit_price))
        raise DepositTooSmall(
            f"{Decimal(usdt_units) / USDT_UNIT} USDT does not buy one lot of {code}: "
            f"{lot} x {limit_price} {currency_of(code)} + fees needs "
            f"{Decimal(need) / USDT_UNIT} USDT",
            required_usdt_units=need,
        )
    return Decimal(lots) * lot


def size_sell(*, token_units: int, quote: Quote) -> Decimal:
    """Whole lots of shares the redeemed tokens cover (the rest is returned as tokens).
    Returns 0 when less than one lot; the caller returns all tokens."""
    if token_units < 0:
        raise ValueError("token units must be non-negative")
    lot = Decimal(quote.lot_size)
    shares = token_units_to_shares(token_units)
    return (shares / lot).to_integral_value(rounding=ROUND_FLOOR) * lot


__all__ = [
    "buy_cost",
    "buy_limit_price",
    "currency_of",
    "fee_for",
    "fx_rate",
    "is_on_tick",
    "market_of",
    "market_to_usdt_units",
    "sell_limit_price",
    "size_buy",
    "size_sell",
    "tick_size_for",
    "usdt_units_to_market",
]
