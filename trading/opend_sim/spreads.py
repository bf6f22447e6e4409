"""The exchanges' price steps as the simulator publishes them (snapshot `price_spread`) and
enforces them (`place_order`, with Futu's `adjust_limit`). Bronco itself carries no table: its
limit prices come from the snapshot's spread and OpenD's adjustment (`trading.pricing`).

HK: HKEX's spread table for equities and REITs (Part A), as in force since HKEX's Phase 1
reduction of minimum spreads on 4 August 2025: HK$10-20 went from 0.02 to 0.01, HK$20-50
from 0.05 to 0.02 (the 20-100 band split at 50). Source: HKEX, "Reduction of Minimum
Spreads", https://www.hkex.com.hk/Services/Trading/Securities/Overview/Trading-Mechanism/Reduction-of-Minimum-Spreads
(launch date 2025-08-04 on the Chinese page; consultation conclusions of 17 Dec 2024).
Phase 2 (HK$0.50-10 from 0.01 to 0.005) was announced for "around mid-2026, subject to the
review of Phase 1"; no effective date was found in the sources, so it is the `"phase2"` table,
chosen with `SimMarket(hk_spread_table="phase2")` or the control command
`set_hk_spread_table`. Exchange-traded products, debt securities and structured products use
other tables and are not modelled.

US: SEC Regulation NMS Rule 612 (sub-penny rule): $0.01 from $1.00, $0.0001 below.

A price exactly on a band's upper bound belongs to that band (HKEX: "from 10.00 to 20.00").
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

# (upper bound of the band, minimum spread inside it), ascending. HKEX Part A.
_HK_PHASE1: tuple[tuple[Decimal, Decimal], ...] = tuple(
    (Decimal(upper), Decimal(spread))
    for upper, spread in (
        ("0.25", "0.001"),
        ("0.50", "0.005"),
        ("10.00", "0.010"),
        ("20.00", "0.010"),  # 0.020 before 2025-08-04
        ("50.00", "0.020"),  # 0.050 before 2025-08-04
        ("100.00", "0.050"),
        ("200.00", "0.100"),
        ("500.00", "0.200"),
        ("1000.00", "0.500"),
        ("2000.00", "1.000"),
        ("5000.00", "2.000"),
        ("9995.00", "5.000"),
    )
)
_HK_PHASE2 = tuple(
    (upper, Decimal("0.005") if upper == Decimal("10.00") else spread)
    for upper, spread in _HK_PHASE1
)
HK_SPREAD_TABLES: dict[str, tuple[tuple[Decimal, Decimal], ...]] = {
    "2025-08-04": _HK_PHASE1,
    "phase2": _HK_PHASE2,
}
DEFAULT_HK_TABLE = "2025-08-04"


def _bands(code: str, table: str) -> tuple[tuple[Decimal, Decimal], ...] | None:
    market = code.split(".", 1)[0].upper()
    if market == "HK":
        return HK_SPREAD_TABLES[table]
    return None


def spread_at(code: str, price: Decimal, *, table: str = DEFAULT_HK_TABLE) -> Decimal:
    """The minimum spread (price step) of the band `price` lies in, market currency."""
    bands = _bands(code, table)
    if bands is None:
        return Decimal("0.01") if price >= 1 else Decimal("0.0001")
    for upper, spread in bands:
        if price <= upper:
            return spread
    return bands[-1][1]


def is_valid_price(code: str, price: Decimal, *, table: str = DEFAULT_HK_TABLE) -> bool:
    """True when `price` is a whole number of its own band's spread."""
    return price > 0 and price % spread_at(code, price, table=table) == 0


def _next_valid(code: str, price: Decimal, *, up: bool, table: str) -> Decimal:
    """The nearest valid price above (or below) `price`: rounding on the grid of the band
    `price` lies in never leaves that band (each band's bounds are whole steps of it, and a
    bound is valid in both bands next to it)."""
    step = spread_at(code, price, table=table)
    rounding = ROUND_CEILING if up else ROUND_FLOOR
    return (price / step).to_integral_value(rounding=rounding) * step


def adjusted_price(
    code: str, price: Decimal, adjust_limit: Decimal, *, table: str = DEFAULT_HK_TABLE
) -> Decimal | None:
    """Futu's `adjust_limit` on `place_order` (Trd_PlaceOrder.proto `adjustPrice` +
    `adjustSideAndLimit`; https://openapi.futunn.com/futu-api-doc/en/trade/place-order.html):
    an invalid price is moved to the nearest valid one upward (positive) or downward
    (negative), by at most |adjust_limit| of the price (0.015: up, at most 1.5%). Returns the
    price to place (unchanged when already valid), or None when no valid price lies within
    the limit (or adjust_limit is 0): then the order is refused for its price step."""
    if is_valid_price(code, price, table=table):
        return price
    if adjust_limit == 0:
        return None
    candidate = _next_valid(code, price, up=adjust_limit > 0, table=table)
    if candidate <= 0 or abs(candidate - price) > abs(adjust_limit) * price:
        return None
    return candidate
