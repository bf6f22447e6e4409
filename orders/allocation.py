"""How a broker fill turns into on-chain settlement amounts. The one function per side that
allocates fills to an order, kept pure so it can be property-tested and, later, applied to
many orders netted into one broker order.

Conservation, exact to the base unit:
  BUY:  usdt_in = cost + fees + refund, tokens minted = filled shares (18-decimal units)
  SELL: tokens_in = tokens for filled shares + tokens returned, payout = proceeds - fees
Rounding always favours the vault by at most one base unit per component: what we charge
rounds up, what we pay rounds down, and a charge never exceeds what the user brought.
"""

from dataclasses import dataclass
from decimal import Decimal

from core.money import (
    market_to_usdt_units_down,
    market_to_usdt_units_up,
    shares_to_token_units,
)


@dataclass(frozen=True)
class Settlement:
    cost_usdt: int
    fees_usdt: int
    refund_usdt: int
    payout_usdt: int
    tokens_minted: int
    tokens_returned: int
    capped: bool = False  # the charge had to be capped at what the user brought


def allocate_buy(
    *,
    usdt_in: int,
    filled_qty: Decimal,
    avg_price: Decimal | None,
    fee: Decimal,
    ccy_per_usdt: Decimal,
) -> Settlement:
    """A deposit of `usdt_in` units whose broker order filled `filled_qty` at `avg_price`
    (market currency) with `fee` (market currency)."""
    if filled_qty <= 0:
        return Settlement(0, 0, usdt_in, 0, 0, 0)
    gross = filled_qty * (avg_price or Decimal(0))
    cost = market_to_usdt_units_up(gross, ccy_per_usdt=ccy_per_usdt)
    charge = market_to_usdt_units_up(gross + fee, ccy_per_usdt=ccy_per_usdt)
    capped = charge > usdt_in
    if capped:
        charge = usdt_in
        cost = min(cost, usdt_in)
    return Settlement(
        cost_usdt=cost,
        fees_usdt=charge - cost,
        refund_usdt=usdt_in - charge,
        payout_usdt=0,
        tokens_minted=shares_to_token_units(filled_qty),
        tokens_returned=0,
        capped=capped,
    )


def allocate_sell(
    *,
    tokens_in: int,
    filled_qty: Decimal,
    avg_price: Decimal | None,
    fee: Decimal,
    ccy_per_usdt: Decimal,
) -> Settlement:
    """A redeem of `tokens_in` token units whose broker sell filled `filled_qty`."""
    sold_units = shares_to_token_units(filled_qty)
    if sold_units > tokens_in:
        raise ValueError(f"sold {filled_qty} shares but only {tokens_in} token units came in")
    if filled_qty <= 0:
        return Settlement(0, 0, 0, 0, 0, tokens_in)
    gross = filled_qty * (avg_price or Decimal(0))
    proceeds = market_to_usdt_units_down(gross, ccy_per_usdt=ccy_per_usdt)
    fees = min(market_to_usdt_units_up(fee, ccy_per_usdt=ccy_per_usdt), proceeds)
    return Settlement(
        cost_usdt=proceeds,
        fees_usdt=fees,
        refund_usdt=0,
        payout_usdt=proceeds - fees,
        tokens_minted=0,
        tokens_returned=tokens_in - sold_units,
    )
