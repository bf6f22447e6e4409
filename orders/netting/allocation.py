"""The arithmetic of a netting cycle, pure and exact to the base unit.

Units: USDT in base units (10^-6 USDT), shares in token units (10^-18 share), prices in the
market currency per whole share (`Decimal`), FX as market currency per 1 USDT. Arithmetic is
done in `Fraction`s and rounded once per amount: what a user is charged rounds up, what a
user is paid or given rounds down, so every rounding favours the vault by less than one base
unit per component.

A cycle, for one symbol:
1. `plan_cycle`: at the quote, each buyer's USDT becomes a demand in token units (after
   Bronco's fee), each seller's tokens a supply; the net (demand - supply) less what the
   house inventory can give is bought in whole lots (with a target, up to the target: a
   buy-ahead, so later cycles are covered without the broker), and inventory above its cap
   is sold in whole lots. Returns the signed broker quantity (0: nothing goes to the broker).
2. `allocate_cycle`: with the broker's fill F (signed token units, whole lots) at its average
   price (or the quote when F = 0), every participant trades at that one price. Sellers are
   always filled in full (crossed against buyers, sold at the broker, or taken into
   inventory). Buyers share what is available, A = supply + inventory + F: in full when
   A covers their demand, otherwise pro rata (floor), the rest of their USDT staying in the
   book for the next cycle. Then, exactly:
     per cycle:  tokens to buyers - tokens from sellers = F + inventory before - inventory after
     per buyer:  cost + fee <= USDT remaining (the rest stays theirs)
     per seller: payout = proceeds - fee, proceeds = floor(value)

Fees are rounded once on an order's whole traded value, as the vault's `quoteFee` is: a
deposit filled over several cycles is charged, at each cycle, what its fee on all its cost so
far adds to the fee it already paid, so its fees add up to ceil(rate x total cost) + flat,
never above `quoteFee(usdtAmount)` (rounding up in every cycle could pass it by a unit per
cycle, and the vault refuses such a settlement with FeeAboveSchedule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

TOKEN_UNITS_PER_SHARE = 10**18
USDT_UNITS_PER_USDT = 10**6
_UNITS_RATIO = TOKEN_UNITS_PER_SHARE // USDT_UNITS_PER_USDT  # 10^12


def _ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


def _floor(x: Fraction) -> int:
    return x.numerator // x.denominator


@dataclass(frozen=True)
class FeeSchedule:
    """Bronco's published fee, the same for every participant of a cycle: `rate` of an
    order's traded value (rounded up to the USDT base unit, once on the order's total) plus
    `flat_units` USDT base units once per order, charged with its first fill. The vault's
    `quoteFee(amount)` is `total(amount)` with the rate in parts per million."""

    rate: Decimal
    flat_units: int = 0

    def __post_init__(self) -> None:
        if self.rate < 0 or self.flat_units < 0:
            raise ValueError("fees are never negative")

    def total(self, value_units: int) -> int:
        """The fee of an order whose fills are worth `value_units` in all (USDT base
        units): ceil(rate x value) + flat; 0 when nothing traded."""
        if value_units <= 0:
            return 0
        return _ceil(Fraction(self.rate) * value_units) + self.flat_units

    def fee(self, value_units: int, *, prior_units: int = 0) -> int:
        """What a fill worth `value_units` adds to the fee of an order that already traded
        `prior_units` (both USDT base units): total(prior + value) - total(prior). An
        order's fees over its cycles so add up to `total` of all it traded."""
        if value_units <= 0:
            return 0
        return self.total(prior_units + value_units) - self.total(prior_units)


@dataclass(frozen=True)
class Pricing:
    """`price`: market currency per share; `ccy_per_usdt`: market currency per 1 USDT."""

    price: Decimal
    ccy_per_usdt: Decimal

    def __post_init__(self) -> None:
        if self.price <= 0 or self.ccy_per_usdt <= 0:
            raise ValueError("price and FX rate must be positive")

    def value(self, token_units: int) -> Fraction:
        """USDT base units `token_units` are worth, exactly."""
        return (
            Fraction(token_units)
            * Fraction(self.price)
            / (Fraction(self.ccy_per_usdt) * _UNITS_RATIO)
        )

    def units_for(self, usdt_units: int) -> int:
        """The most token units whose value is at most `usdt_units` (floor)."""
        if usdt_units <= 0:
            return 0
        return _floor(
            Fraction(usdt_units) * Fraction(self.ccy_per_usdt) * _UNITS_RATIO / Fraction(self.price)
        )


@dataclass(frozen=True)
class Buyer:
    """A deposit in the book: `usdt_units` it still has to spend; `prior_cost_units` the
    cost of what earlier cycles filled of it (its fee is rounded on its total; 0 while
    nothing filled: its flat fee is still due)."""

    key: int
    usdt_units: int
    prior_cost_units: int = 0


@dataclass(frozen=True)
class Seller:
    """A redeem in the book: `token_units` it still has to sell (all in one cycle)."""

    key: int
    token_units: int


def max_cost(usdt_units: int, fees: FeeSchedule, *, prior_units: int = 0) -> int:
    """The largest cost c (USDT base units) with c + fee(c, prior_units) <= usdt_units
    (0 if none)."""
    flat = fees.flat_units if prior_units <= 0 else 0
    if usdt_units <= flat:
        return 0
    # fee(c) > rate x c - 1 + flat, so no cost above this bound fits.
    c = _floor(Fraction(usdt_units - flat + 1) / (1 + Fraction(fees.rate)))
    while c > 0 and c + fees.fee(c, prior_units=prior_units) > usdt_units:
        c -= 1
    return c


def buyer_demand(buyer: Buyer, pricing: Pricing, fees: FeeSchedule) -> int:
    """Token units the buyer's USDT pays for at this price, Bronco's fee included."""
    return pricing.units_for(max_cost(buyer.usdt_units, fees, prior_units=buyer.prior_cost_units))


def whole_lots_up(units: int, lot_units: int) -> int:
    """`units` (token units, >= 0) rounded up to whole lots of `lot_units`: what a buy of
    at least `units` sends to the broker."""
    return -(-units // lot_units) * lot_units


@dataclass(frozen=True)
class CyclePlan:
    """What a cycle sends to the broker: `broker_units` signed token units (+ buy, - sell),
    a whole number of lots; 0 when crossing and inventory square the book."""

    demand_units: int
    supply_units: int
    broker_units: int

    @property
    def net_units(self) -> int:
        return self.demand_units - self.supply_units


def plan_cycle(
    *,
    buyers: Sequence[Buyer],
    sellers: Sequence[Seller],
    quote: Pricing,
    fees: FeeSchedule,
    lot_shares: int,
    inventory_units: int,
    inventory_cap_units: int,
    inventory_target_units: int = 0,
) -> CyclePlan:
    """The broker quantity of a cycle priced at `quote` (see the module docstring).

    After crossing, the inventory would hold `inventory - net` (negative: short of the
    buyers' demand). Below `inventory_target_units` (0: only what squares the book; kept
    at most a lot under the cap, so a whole-lot buy never passes it) the cycle buys whole
    lots up to the target; above `inventory_cap_units` it sells whole lots down to the cap;
    otherwise nothing goes to the broker. Raises ValueError for a non-positive lot or a
    negative inventory, cap or target."""
    if lot_shares <= 0 or inventory_units < 0 or inventory_cap_units < 0:
        raise ValueError("lot must be positive; inventory and cap never negative")
    if inventory_target_units < 0:
        raise ValueError("the inventory target is never negative")
    lot = lot_shares * TOKEN_UNITS_PER_SHARE
    demand = sum(buyer_demand(b, quote, fees) for b in buyers)
    supply = sum(s.token_units for s in sellers)
    after = inventory_units - (demand - supply)  # inventory if the broker does nothing
    target = max(min(inventory_target_units, inventory_cap_units - lot), 0)
    if after < target:
        return CyclePlan(demand, supply, whole_lots_up(target - after, lot))
    if after > inventory_cap_units:
        lots = min(-(-(after - inventory_cap_units) // lot), after // lot)
        return CyclePlan(demand, supply, -lots * lot)
    return CyclePlan(demand, supply, 0)


@dataclass(frozen=True)
class BuyerFill:
    key: int
    token_units: int
    cost_units: int
    fee_units: int


@dataclass(frozen=True)
class SellerFill:
    key: int
    token_units: int
    proceeds_units: int
    fee_units: int

    @property
    def payout_units(self) -> int:
        return self.proceeds_units - self.fee_units


@dataclass(frozen=True)
class CycleAllocation:
    buyers: tuple[BuyerFill, ...]
    sellers: tuple[SellerFill, ...]
    inventory_before: int
    inventory_after: int
    broker_units: int

    @property
    def tokens_to_buyers(self) -> int:
        return sum(b.token_units for b in self.buyers)

    @property
    def tokens_from_sellers(self) -> int:
        return sum(s.token_units for s in self.sellers)


def allocate_cycle(
    *,
    buyers: Sequence[Buyer],
    sellers: Sequence[Seller],
    pricing: Pricing,
    fees: FeeSchedule,
    inventory_units: int,
    broker_units: int,
) -> CycleAllocation:
    """Allocate a cycle whose broker order filled `broker_units` (signed token units) at
    `pricing` (its average fill price, or the quote when nothing went to the broker).
    Raises ValueError when the broker sold more than inventory and sellers could give."""
    supply = sum(s.token_units for s in sellers)
    available = supply + inventory_units + broker_units
    if available < 0:
        raise ValueError(
            f"the broker sold {-broker_units} units; only {supply + inventory_units} were there"
        )
    demands = [buyer_demand(b, pricing, fees) for b in buyers]
    total = sum(demands)
    if total <= available:
        units = demands
    else:
        units = [_floor(Fraction(d * available, total)) for d in demands]
    buyer_fills = []
    for buyer, got in zip(buyers, units, strict=True):
        cost = _ceil(pricing.value(got)) if got else 0
        fee = fees.fee(cost, prior_units=buyer.prior_cost_units) if got else 0
        buyer_fills.append(BuyerFill(buyer.key, got, cost, fee))
    seller_fills = []
    for seller in sellers:
        proceeds = _floor(pricing.value(seller.token_units))
        fee = min(proceeds, fees.fee(proceeds))
        seller_fills.append(SellerFill(seller.key, seller.token_units, proceeds, fee))
    after = available - sum(units)
    return CycleAllocation(
        buyers=tuple(buyer_fills),
        sellers=tuple(seller_fills),
        inventory_before=inventory_units,
        inventory_after=after,
        broker_units=broker_units,
    )
