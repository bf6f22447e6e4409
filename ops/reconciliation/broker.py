"""Reconciliation, the broker side: every netting cycle's order is at the broker under the
cycle's client id with the same id, code, side, quantity, fill and price; no broker order
Bronco does not know; positions and cash follow from the cycles' fills; per symbol, what the
cycles bought net equals the tokens allocated net plus the house inventory."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from decimal import Decimal
from typing import TYPE_CHECKING

from core.money import TOKEN_UNIT
from orders.models import Allocation, Cycle, CycleStatus, HouseInventory, Order
from trading import pricing
from trading import services as broker
from trading.broker import BrokerOrder
from trading.exceptions import RateLimited

if TYPE_CHECKING:
    from ops.reconciliation import Reconciliation

# The broker reports prices and cash as protobuf doubles: compare money to the cent.
_CASH_TOLERANCE = Decimal("0.01")


def _check_cycle(result: Reconciliation, cycle: Cycle, found: list[BrokerOrder]) -> None:
    label = f"cycle {cycle.pk} ({cycle.symbol})"
    if len(found) > 1:
        result.add(
            "db/broker",
            label,
            f"{len(found)} broker orders carry its client id: "
            + ", ".join(b.broker_order_id for b in found),
        )
    if not cycle.futu_order_id:
        if found and cycle.status == CycleStatus.ALLOCATED:
            result.add(
                "db/broker",
                label,
                f"never placed in the database, yet broker order {found[0].broker_order_id}",
            )
        return
    if not found:
        result.add("db/broker", label, f"broker order {cycle.futu_order_id} not at the broker")
        return
    b = found[0]
    side = "BUY" if cycle.broker_units > 0 else "SELL"
    qty = Decimal(abs(int(cycle.broker_units))) / TOKEN_UNIT
    problems = []
    if b.broker_order_id != cycle.futu_order_id:
        problems.append(f"broker id {b.broker_order_id} != {cycle.futu_order_id}")
    if b.code != cycle.stock_code or b.side != side:
        problems.append(f"{b.side} {b.code} != {side} {cycle.stock_code}")
    if b.qty != qty:
        problems.append(f"quantity {b.qty} != {qty}")
    if cycle.status == CycleStatus.ALLOCATED:
        filled = Decimal(abs(int(cycle.filled_units))) / TOKEN_UNIT
        if not b.is_final:
            problems.append(f"allocated but the broker order is {b.raw_status}")
        if b.filled_qty != filled:
            problems.append(f"allocated {filled} shares != {b.filled_qty} filled at the broker")
        if filled and (b.avg_fill_price or Decimal(0)).quantize(Decimal("0.000001")) != (
            cycle.price or Decimal(0)
        ).quantize(Decimal("0.000001")):
            problems.append(f"cycle price {cycle.price} != {b.avg_fill_price} at the broker")
    for p in problems:
        result.add("db/broker", label, p)


def _check_positions_against_tokens(result: Reconciliation, cycles: list[Cycle]) -> None:
    """Per symbol, exact in 10^-18 share units: what the cycles bought less what they sold
    = tokens Bronco allocated to buyers less tokens it took from sellers + house inventory."""
    bought: Counter[str] = Counter()
    for cycle in cycles:
        if cycle.status == CycleStatus.ALLOCATED:
            bought[cycle.symbol] += int(cycle.filled_units)
    allocated: Counter[str] = Counter()
    for symbol, order_type, units in Allocation.objects.values_list(
        "cycle__symbol", "order_type", "token_units"
    ):
        allocated[symbol] += int(units) if order_type == "BUY" else -int(units)
    inventory = dict(HouseInventory.objects.values_list("symbol", "token_units"))
    for symbol in sorted(set(bought) | set(allocated) | set(inventory)):
        held = int(inventory.get(symbol, 0))
        if bought[symbol] != allocated[symbol] + held:
            result.add(
                "db/broker",
                f"symbol {symbol}",
                f"cycles bought {bought[symbol]} units net, but tokens allocated "
                f"{allocated[symbol]} + inventory {held} = {allocated[symbol] + held}",
            )
    result.facts["house_inventory_units"] = {k: int(v) for k, v in sorted(inventory.items())}


# How long reconciliation waits for the history budget the running workers share with it.
_HISTORY_WAIT_SECONDS = 90.0


def broker_orders() -> list[BrokerOrder]:
    """Every order of the account at the broker over the last 90 days, finished or not:
    Futu's open list holds unfinished orders only, so this reads the history (one request
    of its 10 per 30 s budget). While the workers have used that budget up, it waits for
    it (up to _HISTORY_WAIT_SECONDS) rather than failing; RateLimited after that."""
    deadline = time.monotonic() + _HISTORY_WAIT_SECONDS
    while True:
        try:
            return broker.broker_list_orders(include_finished=True)
        except RateLimited as exc:
            if time.monotonic() + exc.retry_after > deadline:
                raise
            time.sleep(max(exc.retry_after, 0.1))


def check_broker(
    result: Reconciliation,
    orders: list[Order],
    in_flight: set[int],
    opening_cash: dict[str, Decimal] | None,
    opening_positions: dict[str, Decimal],
) -> None:
    """Every broker order is a netting cycle's (its remark is the cycle's client id) and
    matches it; per symbol the broker's position is what Bronco's cycles bought and sold,
    which is the tokens outstanding plus the house inventory; cash follows from the fills."""
    at_broker: dict[str, list[BrokerOrder]] = defaultdict(list)
    listing = broker_orders()
    for b in listing:
        at_broker[b.client_id].append(b)
    cycles = list(Cycle.objects.all())
    known = {c.client_id for c in cycles}
    for client_id, found in sorted(at_broker.items()):
        if client_id not in known:
            for b in found:
                result.add(
                    "broker",
                    f"broker order {b.broker_order_id}",
                    f"{b.side} {b.qty} {b.code} remark {client_id or '-'!r} is not a Bronco cycle",
                )
    for cycle in cycles:
        _check_cycle(result, cycle, at_broker.get(cycle.client_id, []))
    _check_positions_against_tokens(result, cycles)

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
