"""Users' price bounds in a cycle (the vault's DepositTerms / RedeemTerms: the most a
deposit pays, the least a redeem takes, USDT base units per whole share; 0 = none).

A cycle takes only the participants whose bound the quote keeps: a deposit whose bound is
below the quote, or a redeem whose bound is above it, stays in the book marked waiting for
the price (audited once as `order.waiting_for_price`; its deadline does not end it, its
expiry or a cancel does). The broker limit of the cycle never crosses a participant's
bound: a buy limit is capped at the lowest buyer bound (rounded down to the tick), a sell
limit raised to the highest seller bound (rounded up). The vault refuses a settlement whose
implied price breaks the bound (PriceAboveBound / PriceBelowBound), so this is where Bronco
keeps to it.

The limit protects only the side the broker trades for: in a net-buy cycle the broker may fill
below the quote, and every participant trades at that fill, sellers crossed inside the cycle
too; in a net-sell cycle it may fill above the quote, buyers included. So at allocation
(`priced_out`) a participant whose bound the cycle's price breaks takes nothing from the
cycle and goes back to the book waiting for the price; the others share what the cycle has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from fractions import Fraction

from django.utils import timezone

from core.money import USDT_UNIT
from orders.models import Order, OrderType, Waiting
from orders.state import orders_record_many


def bound_in_market_currency(bound_units: int, ccy_per_usdt: Decimal) -> Decimal:
    """A bound in USDT base units per share -> market currency per share."""
    return Decimal(bound_units) / USDT_UNIT * ccy_per_usdt


def _to_tick(tick: Decimal, price: Decimal, rounding: str) -> Decimal:
    """`price` on the exchange's tick (the quote's `price_spread`); unchanged without one."""
    if tick <= 0:
        return price
    return (price / tick).to_integral_value(rounding=rounding) * tick


@dataclass
class Bounded:
    """Who takes part in a cycle, and the limit caps their bounds set (market currency)."""

    code: str
    tick: Decimal  # the quote's tick (Futu snapshot `price_spread`), market currency
    orders: list[Order] = field(default_factory=list)
    waiting: list[Order] = field(default_factory=list)
    max_buy: Decimal | None = None
    min_sell: Decimal | None = None

    def clamp(self, limit: Decimal | None, broker_units: int) -> Decimal | None:
        """The cycle's broker limit kept within every participant's bound."""
        if limit is None:
            return None
        if broker_units > 0 and self.max_buy is not None:
            return min(limit, _to_tick(self.tick, self.max_buy, ROUND_FLOOR))
        if broker_units < 0 and self.min_sell is not None:
            return max(limit, _to_tick(self.tick, self.min_sell, ROUND_CEILING))
        return limit


def cycle_participants(
    orders: Sequence[Order],
    *,
    code: str,
    quote_price: Decimal,
    tick: Decimal,
    ccy_per_usdt: Decimal,
    actor: str,
) -> Bounded:
    """Split the book's locked `orders` into participants and those waiting for the price
    (`quote_price` and its `tick` in market currency, `ccy_per_usdt` market currency per
    USDT); marks the waiting ones (once). Call under the orders' row locks."""
    result = Bounded(code=code, tick=tick)
    for order in orders:
        bound_units = int(order.price_bound or 0)
        if bound_units == 0:
            result.orders.append(order)
            continue
        bound = bound_in_market_currency(bound_units, ccy_per_usdt)
        if order.order_type == OrderType.BUY:
            if quote_price > bound:
                result.waiting.append(order)
                continue
            result.max_buy = bound if result.max_buy is None else min(result.max_buy, bound)
        else:
            if quote_price < bound:
                result.waiting.append(order)
                continue
            result.min_sell = bound if result.min_sell is None else max(result.min_sell, bound)
        result.orders.append(order)
    marking = [o for o in result.waiting if o.waiting_for != Waiting.PRICE]
    orders_record_many(
        orders=marking,
        actor=actor,
        action="order.waiting_for_price",
        waiting_for=Waiting.PRICE,
        waiting_since=timezone.now(),
        last_error=f"waiting for the price to reach its bound (quote {quote_price})",
    )
    return result


def breaks_bound(order: Order, *, price: Decimal, ccy_per_usdt: Decimal) -> bool:
    """Whether trading `order` at `price` (market currency per share; `ccy_per_usdt` market
    currency per USDT) breaks its bound: a deposit paying more per share than its bound, a
    redeem taking less. Exact: the price in USDT base units per share against the bound."""
    bound_units = int(order.price_bound or 0)
    if bound_units == 0:
        return False
    per_share = Fraction(price) * USDT_UNIT / Fraction(ccy_per_usdt)
    if order.order_type == OrderType.BUY:
        return per_share > bound_units
    return per_share < bound_units


def priced_out(
    orders: Sequence[Order], *, price: Decimal, ccy_per_usdt: Decimal
) -> tuple[list[Order], list[Order]]:
    """(those who trade, those whose bound `price` breaks) among a cycle's `orders`."""
    kept: list[Order] = []
    out: list[Order] = []
    for order in orders:
        (out if breaks_bound(order, price=price, ccy_per_usdt=ccy_per_usdt) else kept).append(order)
    return kept, out


def back_to_book_for_price(order: Order, price: Decimal, now: datetime) -> dict:
    """The changes of a participant `priced_out` of its cycle: it leaves the cycle with
    nothing traded and waits in the book for the price (its expiry or a cancel ends it)."""
    return {
        "cycle": None,
        "waiting_for": Waiting.PRICE,
        "waiting_since": now,
        "last_error": f"the cycle's price {price} broke its bound: waiting for the price",
    }
