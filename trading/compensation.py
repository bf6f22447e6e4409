"""What the vault owes or is owed when the broker changes fills after settlement.

A `BrokerFillCorrection` (trading.models) says a broker order's fills went from
`before` (quantity, average price) to `after` after Bronco took them as final: deals
cancelled (FILL_CANCELLED) or corrected (CHANGED). By then the order's fill was allocated
to its participants and settled: tokens minted or burned, USDT paid. This module turns the
case into figures operators act on, per affected allocation and in total:

- `shares_owed_units` (token units, 10^-18 share): shares the vault must still obtain (+)
  or holds beyond its tokens (-). A BUY whose fills shrank leaves tokens the broker no
  longer backs; a SELL that sold less left shares at the broker whose tokens were burned.
  Split over the allocations on the broker's side of the order (buyers of a BUY, sellers of
  a SELL) in proportion to their token units: whose tokens the missing shares backed.
- `usdt_owed_units` (USDT base units): the vault owes the participant (+) or the
  participant owes the vault (-) because the one price of the allocation (the broker's
  average) moved: every participant traded at it, so each is re-priced at the new average.
- `broker_cash_units` (USDT base units, total only): cash the broker returned to the
  account (+) or took from it (-), at the allocation's FX rate.

Rounding is conservative: what the vault owes rounds up (never understated), what the broker
returned rounds down. Units, as everywhere: prices in the market currency per share, FX as
market currency per 1 USDT.

The allocations are read through `TRADING_FILL_ALLOCATIONS`, a dotted path to a callable
`(client_id=...) -> FillAllocations | None` (default `orders.selectors.broker_fill_allocations`):
trading never imports the order lifecycle, which owns the allocations.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

TOKEN_UNITS_PER_SHARE = 10**18
USDT_UNITS_PER_USDT = 10**6


@dataclass(frozen=True)
class AllocationShare:
    """One participant's part of a broker order's fill: `side` is the participant's
    (BUY deposit, SELL redeem), `token_units` what it got or gave, `usdt_units` its cost or
    proceeds."""

    order_id: int
    side: str
    token_units: int
    usdt_units: int


@dataclass(frozen=True)
class FillAllocations:
    """How a broker order's fill was allocated: `ref` names the allocation (e.g. a cycle),
    `side` is the broker order's, `ccy_per_usdt` the FX it used."""

    ref: str
    side: str
    ccy_per_usdt: Decimal
    allocations: tuple[AllocationShare, ...]


@dataclass(frozen=True)
class CompensationLine:
    order_id: int
    side: str
    token_units: int
    shares_owed_units: int
    usdt_owed_units: int


@dataclass(frozen=True)
class Compensation:
    ref: str
    shares_owed_units: int
    usdt_owed_units: int
    broker_cash_units: int
    lines: tuple[CompensationLine, ...]


def _ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


def _floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def _usdt(shares: Fraction, price: Decimal | None, ccy_per_usdt: Decimal) -> Fraction:
    """Exact USDT base units of `shares` at `price` (market currency)."""
    if price is None or shares == 0:
        return Fraction(0)
    return shares * Fraction(price) * USDT_UNITS_PER_USDT / Fraction(ccy_per_usdt)


def fill_compensation(
    *,
    before_qty: Decimal,
    before_price: Decimal | None,
    after_qty: Decimal,
    after_price: Decimal | None,
    fills: FillAllocations,
) -> Compensation:
    """The case's figures (see the module docstring). Quantities in shares, prices in the
    market currency; raises ValueError for a non-positive FX rate or negative quantities."""
    if fills.ccy_per_usdt <= 0 or before_qty < 0 or after_qty < 0:
        raise ValueError("FX must be positive and quantities non-negative")
    sign = 1 if fills.side == "BUY" else -1
    # Shares the broker holds beyond (+) or short of (-) what the settled tokens assume.
    held_delta = Fraction(sign) * (Fraction(after_qty) - Fraction(before_qty))
    shares_owed = -held_delta * TOKEN_UNITS_PER_SHARE
    broker_side = [a for a in fills.allocations if a.side == fills.side]
    side_units = sum(a.token_units for a in broker_side)
    repriced = bool(before_qty > 0 and after_qty > 0 and before_price and after_price)
    lines = []
    for a in fills.allocations:
        share = (
            shares_owed * a.token_units / side_units
            if a.side == fills.side and side_units
            else Fraction(0)
        )
        usdt = Fraction(0)
        if repriced:
            shares = Fraction(a.token_units, TOKEN_UNITS_PER_SHARE)
            at_before = _usdt(shares, before_price, fills.ccy_per_usdt)
            at_after = _usdt(shares, after_price, fills.ccy_per_usdt)
            # A buyer paid at `before`: a lower average means it overpaid (the vault owes).
            usdt = at_before - at_after if a.side == "BUY" else at_after - at_before
        lines.append(
            CompensationLine(
                order_id=a.order_id,
                side=a.side,
                token_units=a.token_units,
                shares_owed_units=_ceil(share),
                usdt_owed_units=_ceil(usdt),
            )
        )
    cash = sign * (
        _usdt(Fraction(before_qty), before_price, fills.ccy_per_usdt)
        - _usdt(Fraction(after_qty), after_price, fills.ccy_per_usdt)
    )
    return Compensation(
        ref=fills.ref,
        shares_owed_units=_ceil(shares_owed),
        usdt_owed_units=sum(line.usdt_owed_units for line in lines),
        broker_cash_units=_floor(cash),
        lines=tuple(lines),
    )
