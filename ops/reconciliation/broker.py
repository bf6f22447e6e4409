"""Reconciliation, the broker side: every placed order is at the broker under its client id
with the same id, code, side, quantity and fill; no broker order Bronco does not know;
positions and cash follow from Bronco's fills."""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from typing import TYPE_CHECKING

from ops.reconciliation.database import order_label
from orders.models import Order
from trading import pricing
from trading import services as broker
from trading.broker import BrokerOrder

if TYPE_CHECKING:
    from ops.reconciliation import Reconciliation

# The broker reports prices and cash as protobuf doubles: compare money to the cent.
_CASH_TOLERANCE = Decimal("0.01")


def broker_orders() -> list[BrokerOrder]:
    """Every order of the account at the broker over the last 90 days, finished or not:
    Futu's open list holds unfinished orders only, so this reads the history (one request
    of its 10 per 30 s budget)."""
    return broker.broker_list_orders(include_finished=True)


def check_broker(
    result: Reconciliation,
    orders: list[Order],
    in_flight: set[int],
    opening_cash: dict[str, Decimal] | None,
    opening_positions: dict[str, Decimal],
) -> None:
    at_broker: dict[str, list[BrokerOrder]] = defaultdict(list)
    listing = broker_orders()
    for b in listing:
        at_broker[b.client_id].append(b)
    known = {o.client_id for o in orders}
    for client_id, found in sorted(at_broker.items()):
        if client_id not in known:
            for b in found:
                result.add(
                    "broker",
                    f"broker order {b.broker_order_id}",
                    f"{b.side} {b.qty} {b.code} remark {client_id or '-'!r} is not a Bronco order",
                )
    for o in orders:
        found = at_broker.get(o.client_id, [])
        if len(found) > 1:
            result.add(
                "db/broker",
                order_label(o),
                f"{len(found)} broker orders carry its client id: "
                + ", ".join(b.broker_order_id for b in found),
            )
        if not o.futu_order_id:
            if found and o.pk not in in_flight:
                result.add(
                    "db/broker",
                    order_label(o),
                    f"never placed in the database, yet broker order {found[0].broker_order_id}",
                )
            continue
        if not found:
            result.add(
                "db/broker", order_label(o), f"broker order {o.futu_order_id} not at the broker"
            )
            continue
        b = found[0]
        problems = []
        if b.broker_order_id != o.futu_order_id:
            problems.append(f"broker id {b.broker_order_id} != {o.futu_order_id}")
        if b.code != o.stock_code or b.side != o.order_type:
            problems.append(f"{b.side} {b.code} != {o.order_type} {o.stock_code}")
        if o.qty is not None and b.qty != o.qty:
            problems.append(f"quantity {b.qty} != {o.qty}")
        if o.outcome:
            if not b.is_final:
                problems.append(f"finalized but the broker order is {b.raw_status}")
            if b.filled_qty != o.filled_qty:
                problems.append(f"filled {o.filled_qty} != {b.filled_qty} at the broker")
            if (b.avg_fill_price or Decimal(0)).quantize(Decimal("0.000001")) != (
                o.avg_fill_price or Decimal(0)
            ).quantize(Decimal("0.000001")):
                problems.append(
                    f"average price {o.avg_fill_price} != {b.avg_fill_price} at the broker"
                )
        for p in problems:
            result.add("db/broker", order_label(o), p)

    net: Counter[str] = Counter()
    cash: dict[str, Decimal] = defaultdict(Decimal)
    filled = [b for b in listing if b.client_id in known and b.filled_qty > 0]
    # The broker's own fee per order (order_fee_query), not Bronco's model of it.
    real_fees = broker.broker_order_fees(client_ids=[b.client_id for b in filled])
    for b in filled:
        value = b.filled_qty * (b.avg_fill_price or Decimal(0))
        fee = real_fees.get(b.client_id)
        if fee is None:
            result.notes.append(
                f"broker fee of {b.client_id} unknown: Bronco's fee model used for cash"
            )
            fee = pricing.fee_for(b.code, b.filled_qty, b.avg_fill_price or Decimal(0))
        currency = pricing.currency_of(b.code)
        if b.side == "BUY":
            net[b.code] += b.filled_qty
            cash[currency] -= value + fee
        else:
            net[b.code] -= b.filled_qty
            cash[currency] += value - fee
    positions = {p.code: p.qty for p in broker.broker_positions()}
    for code in sorted(set(positions) | set(net) | set(opening_positions)):
        expected = opening_positions.get(code, Decimal(0)) + net[code]
        held = positions.get(code, Decimal(0))
        if held != expected:
            result.add(
                "broker",
                f"position {code}",
                f"holds {held}, Bronco's fills account for {expected} ({held - expected:+} "
                "unexplained)",
            )
    result.facts["broker_orders"] = len(listing)
    result.facts["broker_positions"] = {k: str(v) for k, v in sorted(positions.items()) if v}
    if opening_cash is None:
        result.notes.append("broker cash not checked: no opening cash given (--opening-cash)")
        return
    funds = broker.broker_funds()
    for currency, opening in sorted(opening_cash.items()):
        held = funds.cash_by_currency.get(currency)
        if held is None:
            result.notes.append(f"broker reports no {currency} cash; not checked")
            continue
        expected = opening + cash[currency]
        if abs(held - expected) > _CASH_TOLERANCE:
            result.add(
                "broker",
                f"cash {currency}",
                f"holds {held}, opening {opening} and Bronco's fills make {expected} "
                f"({held - expected:+} unexplained)",
            )
    result.facts["broker_cash"] = {k: str(v) for k, v in sorted(funds.cash_by_currency.items())}
