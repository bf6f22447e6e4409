"""The fee schedule the simulator charges and reports through `order_fee_query`.

Modelled on Futu's published schedules (fixed plans), per order, on what the order filled:

- US stocks (https://www.futuhk.com/en/support/topic283): commission USD 0.0049 per share,
  minimum USD 0.99 per order; platform fee (fixed) USD 0.005 per share, minimum USD 1.00;
  on sells only, the SEC fee 0.0000278 x amount (minimum USD 0.01) and FINRA's trading
  activity fee USD 0.000166 per share (minimum USD 0.01, maximum USD 8.30).
- HK stocks (https://www.futuhk.com/en/commissionnew): commission 0.03 %, minimum HKD 3;
  platform fee (fixed) HKD 15 per order; stamp duty 0.1 % rounded up to the whole dollar;
  trading fee 0.00565 %, minimum HKD 0.01; SFC levy 0.0027 %, minimum HKD 0.01; FRC levy
  0.00015 %; settlement fee 0.002 %, minimum HKD 2, maximum HKD 100.

Each item is rounded up to the cent (stamp duty to the dollar). Names are the item titles
Futu's `fee_details` uses. Futu may waive items (commission-free periods) and rates change
with the regulators; the simulator charges the schedule as written.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

CENT = Decimal("0.01")


def _up(amount: Decimal, quantum: Decimal = CENT) -> Decimal:
    return amount.quantize(quantum, rounding=ROUND_CEILING)


def _between(amount: Decimal, low: Decimal, high: Decimal | None = None) -> Decimal:
    amount = max(amount, low)
    return min(amount, high) if high is not None else amount


def us_fees(*, side: str, qty: Decimal, value: Decimal) -> list[tuple[str, Decimal]]:
    items = [
        ("Commission", _up(_between(qty * Decimal("0.0049"), Decimal("0.99")))),
        ("Platform Fees", _up(_between(qty * Decimal("0.005"), Decimal("1.00")))),
    ]
    if side == "SELL":
        items.append(("SEC Fee", _up(_between(value * Decimal("0.0000278"), CENT))))
        items.append(
            (
                "Trading Activity Fee",
                _up(_between(qty * Decimal("0.000166"), CENT, Decimal("8.30"))),
            )
        )
    return items


def hk_fees(*, side: str, qty: Decimal, value: Decimal) -> list[tuple[str, Decimal]]:
    del side, qty  # HK charges both sides alike, on the amount
    return [
        ("Commission", _up(_between(value * Decimal("0.0003"), Decimal("3")))),
        ("Platform Fees", Decimal("15.00")),
        ("Stamp Duty", _up(value * Decimal("0.001"), Decimal("1"))),
        ("Trading Fees", _up(_between(value * Decimal("0.0000565"), CENT))),
        ("SFC Transaction Levy", _up(_between(value * Decimal("0.000027"), CENT))),
        ("FRC Transaction Levy", _up(value * Decimal("0.0000015"))),
        (
            "Settlement Fees",
            _up(_between(value * Decimal("0.00002"), Decimal("2"), Decimal("100"))),
        ),
    ]


def order_fees(*, code: str, side: str, qty: Decimal, value: Decimal) -> list[tuple[str, Decimal]]:
    """The itemised fee of an order that filled `qty` shares for `value` (market currency);
    nothing for an order without fills."""
    if value <= 0 or qty <= 0:
        return []
    market = code.split(".", 1)[0]
    if market == "HK":
        return hk_fees(side=side, qty=qty, value=value)
    return us_fees(side=side, qty=qty, value=value)


def total(items: list[tuple[str, Decimal]]) -> Decimal:
    return sum((amount for _, amount in items), Decimal("0"))
